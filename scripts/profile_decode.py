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
from spd_ref.model import (ATTENTION_IMPLS, COMPILE_MODES, DEFAULT_ATTENTION, LINEAR_IMPLS, LM_HEAD_MODES,  # noqa: E402
                           NORM_IMPLS, TPTransformer)
from spd_ref.tp import init_distributed  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--layers", type=int, default=8)
ap.add_argument("--ctx", type=int, default=512)
ap.add_argument("--shard-of", type=int, default=1)
ap.add_argument("--lm-head", choices=LM_HEAD_MODES, default="split")
ap.add_argument("--compile-mode", choices=list(COMPILE_MODES), default="max-autotune-no-cudagraphs")
ap.add_argument("--attention", choices=ATTENTION_IMPLS, default=DEFAULT_ATTENTION)
ap.add_argument("--linear", choices=LINEAR_IMPLS, default="torch")
ap.add_argument("--norm", choices=NORM_IMPLS, default="torch")
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--out", required=True)
args = ap.parse_args()
ctx = shard_context(init_distributed(), args.shard_of)
model = TPTransformer.random(llama_config("llama2-7b", args.layers), ctx)
model.lm_head_mode, model.comm, model.attention, model.linear = args.lm_head, "none", args.attention, args.linear
model.norm = args.norm
model.compile_blocks(args.compile_mode)
model.setup_cache(args.batch, args.ctx + 1)
for cache in model.caches:  # random keys and values stand for a prefill of ctx tokens (as bench does)
    for t in cache:
        t.normal_()
tok = torch.randint(0, 32000, (args.batch, 1), device=ctx.device)
pos = torch.tensor([args.ctx], device=ctx.device)
for _ in range(5):
    model(tok, pos)
torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(20):
        model(tok, pos)
    torch.cuda.synchronize()
table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=90)
cuda = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
kernels = sum(e.count for e in cuda) / 20
busy_ms = sum(e.self_device_time_total for e in cuda) / 20 / 1000
inductor_env = {k: v for k, v in os.environ.items() if k.startswith("TORCHINDUCTOR_") and not k.endswith("CACHE_DIR")}
header = (f"7B shape, {args.layers} layers, shard of TP {args.shard_of} (no communication), lm_head "
          f"{args.lm_head}, attention {args.attention}, linear {args.linear}, norm {args.norm}, batch {args.batch}, "
          f"ctx {args.ctx}, compile mode {args.compile_mode}, inductor env {inductor_env}, "
          f"20 compiled decode steps (no graph): {kernels:.0f} GPU kernels and {busy_ms:.3f} ms of kernel "
          f"time per step\n")
open(args.out, "w").write(header + table)
print(header + table)
