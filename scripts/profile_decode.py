"""Where a compiled decode step's GPU time goes: top kernels of the 7B shape at TP 1 (one GPU).

    python3 scripts/profile_decode.py --layers 8 --out results/h100/profile_decode.txt
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from spd_ref.bench import llama_config  # noqa: E402
from spd_ref.model import TPTransformer  # noqa: E402
from spd_ref.tp import init_distributed  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--layers", type=int, default=8)
ap.add_argument("--ctx", type=int, default=512)
ap.add_argument("--out", required=True)
args = ap.parse_args()
ctx = init_distributed()
model = TPTransformer.random(llama_config("llama2-7b", args.layers), ctx)
model.compile_blocks()
model.setup_cache(1, args.ctx + 1)
ids = torch.randint(0, 32000, (1, args.ctx), device=ctx.device)
model(ids, torch.arange(args.ctx, device=ctx.device))
tok, pos = ids[:, -1:], torch.tensor([args.ctx], device=ctx.device)
for _ in range(5):
    model(tok, pos)
torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(20):
        model(tok, pos)
    torch.cuda.synchronize()
table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=20)
header = f"7B shape, {args.layers} layers, TP 1, batch 1, ctx {args.ctx}, 20 compiled decode steps (no graph)\n"
open(args.out, "w").write(header + table)
print(header + table)
