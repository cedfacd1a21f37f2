"""RMSNorm of a decode step on one GPU: torch's ops (eager and compiled) against spd_ref's Triton kernel.

    python3 scripts/norm_bench.py --out norm.jsonl   # rows 1 and 16; hidden 4096 (7B) and 5120 (13B)

Each call is timed in a CUDA graph of back-to-back calls that cycle through 32 inputs (one per layer). It
reports microseconds per call for `torch` (spd_ref.kernels.rmsnorm.reference, eager), `compiled` (the same
under torch.compile, as inductor writes it when it cannot fuse it into a neighbour), `triton-compiled`
(the kernel through its torch op inside torch.compile, as the compiled block runs it) and the kernel
launched directly with each candidate warp count (`triton(W)`). Before timing, each output is compared
with the eager reference: `bit_equal` is the share of elements equal to the bit (the kernel rounds as
torch does; only the order of the sum of squares differs) and `max_abs` the largest difference.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from spd_ref.kernels import rmsnorm  # noqa: E402
from spd_ref.latency.timing import us_per_call  # noqa: E402

LAYERS = 32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="1,16")
    ap.add_argument("--hidden", default="4096,5120")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import triton
    dev, bf16 = torch.device("cuda"), torch.bfloat16
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda}
    rmsnorm.prepare("triton")
    methods = {"torch": lambda x, w: rmsnorm.reference(x, w, 1e-5),
               "compiled": torch.compile(lambda x, w: rmsnorm.reference(x, w, 1e-5), dynamic=False),
               "triton-compiled": torch.compile(lambda x, w: rmsnorm.rms_norm(x, w, 1e-5, "triton"), dynamic=False)}
    methods.update({f"triton({warps})": lambda x, w, warps=warps: rmsnorm.launch(x, w, 1e-5, warps)
                    for warps in rmsnorm.WARPS})
    with open(args.out, "a") as out:
        for rows in map(int, args.rows.split(",")):
            for hidden in map(int, args.hidden.split(",")):
                gen = torch.Generator(device=dev).manual_seed(0)
                xs = [torch.randn(rows, 1, hidden, generator=gen, device=dev).to(bf16) for _ in range(LAYERS)]
                ws = [(torch.rand(hidden, generator=gen, device=dev) + 0.5).to(bf16) for _ in range(LAYERS)]
                want = rmsnorm.reference(xs[0], ws[0], 1e-5)
                for name, fn in methods.items():
                    got = fn(xs[0], ws[0])
                    row = {"rows": rows, "hidden": hidden, "method": name,
                           "bit_equal": (got == want).float().mean().item(),
                           "max_abs": (got.float() - want.float()).abs().max().item(), **meta}
                    row["us"] = us_per_call([lambda x=x, w=w: fn(x, w) for x, w in zip(xs, ws)], dev, args.repeats)
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(f"rows {rows:2d} hidden {hidden}  {name:16s} {row['us']:6.2f} us  "
                          f"bit-equal {row['bit_equal']:.4f}  max abs {row['max_abs']:.4g}", flush=True)


if __name__ == "__main__":
    main()
