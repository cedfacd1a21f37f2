"""The decode GEMVs on one GPU: cuBLAS (F.linear), inductor's max-autotune, and spd_ref's Triton kernel.

    python3 scripts/gemv_bench.py --out gemv.jsonl                  # 7B TP-2 shard shapes, rows 1 and 16
    python3 scripts/gemv_bench.py --shapes llama2-7b:1,llama2-13b:2 --no-inductor

For each projection of a shape's TP shard (qkv, o, gate/up, down, the split lm_head) and each row
count it times y = x W^T in a CUDA graph of back-to-back calls, cycling through enough copies of W
that no call finds its weight in L2 (a decode step reads every layer's weights once). It reports
microseconds per call and the weight bytes over that time (TB/s), for: `cublas` (F.linear), `inductor`
(torch.compile of F.linear with max-autotune-no-cudagraphs, the bench's default: one-row matmuls
become reduction kernels), `triton` (spd_ref.kernels.gemv with its chosen setting) and every
`triton` candidate setting, and `read` (a sum over W: how fast this GPU streams the bytes at all;
a reference, not a bound).
Outputs are checked against cuBLAS (bf16 tolerance) before anything is timed.
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from spd_ref.kernels import gemv  # noqa: E402
from spd_ref.latency.timing import us_per_call  # noqa: E402

DIMS = {"llama2-7b": (4096, 32, 32, 11008, 32000), "llama2-13b": (5120, 40, 40, 13824, 32000)}  # d, heads, kv, ffn, V
L2_DEFEAT_BYTES = 512 << 20  # cycle through this many bytes of weight copies (H200 L2: 50 MB)


def projections(shape: str, tp: int) -> dict[str, tuple[int, int]]:
    d, heads, kv, ffn, vocab = DIMS[shape]
    hd = d // heads
    return {"qkv": ((heads + 2 * kv) * hd // tp, d), "o": (d, heads * hd // tp), "gate_up": (2 * ffn // tp, d),
            "down": (d, ffn // tp), "lm_head": (math.ceil(vocab / tp), d)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="llama2-7b:2", help="comma-separated SHAPE:TP")
    ap.add_argument("--rows", default="1,16")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--no-inductor", action="store_true", help="skip the inductor column (its compiles take minutes)")
    ap.add_argument("--no-configs", action="store_true",
                    help="time only the kernel's chosen setting, not each candidate")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import triton
    dev = torch.device("cuda")
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda}
    inductor = torch.compile(F.linear, mode="max-autotune-no-cudagraphs", dynamic=False)
    with open(args.out, "a") as out:
        for item in args.shapes.split(","):
            shape, tp = item.split(":")
            for name, (n, k) in projections(shape, int(tp)).items():
                copies = max(2, math.ceil(L2_DEFEAT_BYTES / (n * k * 2)))
                weights = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k ** 0.5 for _ in range(copies)]
                for m in map(int, args.rows.split(",")):
                    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
                    ref = F.linear(x, weights[0]).float()
                    err = (gemv.launch(x, weights[0]).float() - ref).abs().max().item()
                    if err > 2e-2 * ref.abs().max().item():
                        raise SystemExit(f"{shape} {name} rows {m}: kernel differs from cuBLAS by {err}")
                    methods = {"cublas": F.linear, "triton": gemv.launch,
                               "read": lambda x, w: w.sum(dtype=torch.float32)}
                    if not args.no_inductor:
                        methods["inductor"] = inductor
                    if not args.no_configs:
                        for cfg in gemv.ONE_ROW_CONFIGS if m == 1 else gemv.MANY_ROW_CONFIGS:
                            methods["triton" + str(cfg)] = lambda x, w, cfg=cfg: gemv.launch(x, w, config=cfg)
                    timed = {}
                    for method, fn in methods.items():
                        calls = [lambda w=w, fn=fn, x=x: fn(x, w) for w in weights]
                        us = timed[method] = us_per_call(calls, dev, args.repeats)
                        row = dict(meta, shape=shape, tp=int(tp), proj=name, n=n, k=k, rows=m, method=method,
                                   us=round(us, 2), tb_s=round(n * k * 2 / us / 1e6, 3), max_err=err)
                        out.write(json.dumps(row) + "\n")
                        out.flush()
                        if "(" not in method:
                            print(f"{shape} tp{tp} {name:8s} {n:6d}x{k:<6d} rows {m:2d} {method:9s} "
                                  f"{us:8.2f} us {row['tb_s']:6.3f} TB/s", flush=True)
                    configs = {k: v for k, v in timed.items() if "(" in k}
                    if configs:
                        best = min(configs, key=configs.get)
                        print(f"    best candidate {best[6:]} {configs[best]:.2f} us", flush=True)
                    del x
                del weights
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
