"""Decode attention on one GPU: sdpa, compiled math and flex, and spd_ref's split-KV Triton kernel.

    python3 scripts/attention_bench.py --out attention.jsonl   # 7B TP-2, TP-1 shards; batch 1, 16; ctx 512, 2048

For a shape's TP shard (heads / TP query and KV heads of 128) it times one decode token's attention
over ctx + 1 cached keys, as the latency bench runs it, in a CUDA graph of back-to-back calls that cycle
through one cache per layer (a step reads every layer's cache once; one 7B TP-2 layer's cache at batch
1 is 4 MB, inside the H200's 50 MB L2, so one copy would be served from L2). It reports microseconds per
call and the cache bytes over that time (TB/s) for: `sdpa` (the runtime's default), `math` and `flex`
(torch.compile of spd_ref.kernels.attention's spelled-out and FlexAttention forms, as the compiled
block runs them), `triton` (spd_ref.kernels.splitkv, launched directly) and `triton-compiled`
(through its torch op inside torch.compile, as the compiled block runs it), and the kernel with each
candidate launch setting of splitkv.CONFIGS (`triton(...)`). Every output is checked
against sdpa in fp32 (bf16 tolerance) before anything is timed.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from spd_ref.kernels import splitkv  # noqa: E402
from spd_ref.kernels.attention import attention, prepare  # noqa: E402
from spd_ref.latency.timing import us_per_call  # noqa: E402

SHAPES = {"llama2-7b": (32, 32, 128, 32), "llama2-13b": (40, 40, 128, 40)}  # heads, kv heads, head dim, layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="llama2-7b:2,llama2-7b:1", help="comma-separated SHAPE:TP")
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--ctx", default="512,2048")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--no-configs", action="store_true", help="time only the kernel's chosen setting")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import triton
    dev, bf16 = torch.device("cuda"), torch.bfloat16
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda}
    prepare("triton")
    methods = {"sdpa": lambda q, k, v, m: attention(q, k, v, m, "sdpa"),
               "triton": splitkv.launch,
               "triton-compiled": torch.compile(lambda q, k, v, m: attention(q, k, v, m, "triton"), dynamic=False),
               "math": torch.compile(lambda q, k, v, m: attention(q, k, v, m, "math"), dynamic=False),
               "flex": torch.compile(lambda q, k, v, m: attention(q, k, v, m, "flex"), dynamic=False)}
    if not args.no_configs:
        methods.update({f"triton{cfg}": lambda q, k, v, m, cfg=cfg: splitkv.launch(q, k, v, m, cfg)
                        for cfg in splitkv.CONFIGS})
    with open(args.out, "a") as out:
        for item in args.shapes.split(","):
            shape, tp = item.split(":")
            heads, kv_heads, hd, layers = SHAPES[shape]
            hq, hkv = heads // int(tp), kv_heads // int(tp)
            for batch in map(int, args.batch.split(",")):
                for ctx in map(int, args.ctx.split(",")):
                    s = ctx + 1
                    caches = [(torch.randn(batch, hkv, s, hd, device=dev, dtype=bf16),
                               torch.randn(batch, hkv, s, hd, device=dev, dtype=bf16)) for _ in range(layers)]
                    q = torch.randn(batch, hq, 1, hd, device=dev, dtype=bf16)
                    mask = torch.ones(1, 1, 1, s, dtype=torch.bool, device=dev)
                    k0, v0 = caches[0]
                    want = attention(q.float(), k0.float(), v0.float(), mask, "sdpa")
                    cache_bytes = 2 * batch * hkv * s * hd * 2
                    timed = {}
                    for method, fn in methods.items():
                        try:
                            err = (fn(q, k0, v0, mask).float() - want).abs().max().item()
                        except Exception as exc:  # a method that fails to build is reported, the rest still run
                            print(f"{shape} tp{tp} b{batch:2d} ctx{ctx:5d} {method}: FAILED {type(exc).__name__}: "
                                  f"{str(exc)[-300:]}", flush=True)
                            continue
                        if err > 2e-2 * want.abs().max().item():
                            raise SystemExit(f"{shape} tp{tp} b{batch} ctx{ctx} {method}: differs from sdpa by {err}")
                        calls = [lambda k=k, v=v: fn(q, k, v, mask) for k, v in caches]
                        us = timed[method] = us_per_call(calls, dev, args.repeats)
                        row = dict(meta, shape=shape, tp=int(tp), batch=batch, ctx=ctx, heads=hq, kv_heads=hkv,
                                   method=method, us=round(us, 2), tb_s=round(cache_bytes / us / 1e6, 3),
                                   max_err=err)
                        out.write(json.dumps(row) + "\n")
                        out.flush()
                        if "(" not in method:
                            print(f"{shape} tp{tp} b{batch:2d} ctx{ctx:5d} {method:16s} {us:8.2f} us "
                                  f"{row['tb_s']:6.3f} TB/s", flush=True)
                    configs = {k: v for k, v in timed.items() if "(" in k}
                    if configs:
                        best = min(configs, key=configs.get)
                        print(f"    best candidate {best[6:]} {configs[best]:.2f} us", flush=True)
                    del caches
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
