"""Where a compiled decode step's GPU time goes: top kernels of the 7B shape on one GPU.

    python3 scripts/profile_decode.py --layers 8 --out results/h100/profile_decode.txt
    python3 scripts/profile_decode.py --shard-of 4 --out profile_shard4.txt

--shard-of N profiles rank 0's shard of a TP-N model with no communication (bench --shard-of).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from spd_ref.latency.bench import shard_context  # noqa: E402
from spd_ref.latency.workload import llama_config  # noqa: E402
from spd_ref.model import LM_HEAD_MODES, TPTransformer  # noqa: E402
from spd_ref.tp import init_distributed  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--layers", type=int, default=8)
ap.add_argument("--ctx", type=int, default=512)
ap.add_argument("--shard-of", type=int, default=1)
ap.add_argument("--lm-head", choices=LM_HEAD_MODES, default="split")
ap.add_argument("--compile-mode", default="max-autotune-no-cudagraphs")
ap.add_argument("--out", required=True)
args = ap.parse_args()
ctx = shard_context(init_distributed(), args.shard_of)
model = TPTransformer.random(llama_config("llama2-7b", args.layers), ctx)
model.lm_head_mode, model.comm = args.lm_head, "none"
model.compile_blocks(mode=args.compile_mode)
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
table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=24)
kernels = sum(e.count for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA) / 20
header = (f"7B shape, {args.layers} layers, shard of TP {args.shard_of} (no communication), lm_head "
          f"{args.lm_head}, batch 1, ctx {args.ctx}, compile mode {args.compile_mode}, "
          f"20 compiled decode steps (no graph): {kernels:.0f} GPU kernels per step\n")
open(args.out, "w").write(header + table)
print(header + table)
