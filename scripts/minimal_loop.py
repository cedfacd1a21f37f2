"""A reviewer's minimal TP decode loop, written without spd_ref, to hold our runtime to account.

    torchrun --standalone --nproc-per-node 2 scripts/minimal_loop.py --allreduce nccl,oneshot --out min.jsonl
    python3 scripts/minimal_loop.py --shard-of 2 --out min.jsonl      # the TP-2 floor on one GPU
    python3 scripts/minimal_loop.py --out min.jsonl                   # TP 1

LLaMA2-shaped blocks with random bf16 weights (fused QKV and gate/up, SDPA over a static KV cache),
the whole decode step of all blocks compiled as one graph (fullgraph=True) and captured in one CUDA
graph; no embedding and no lm_head (our runtime has both). Per all-reduce kind it times the baseline
(two all-reduces per block), SPD on every block (one) and the floor (none), median of the replays.
"nccl" is torch's functional all-reduce; "oneshot" is PyTorch's symmetric-memory one-shot all-reduce
(never NVLink multicast). If spd_ref's baseline is slower than this loop, the difference is ours.
"""
import argparse
import datetime
import json
import os

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F

SHAPES = {"llama2-7b": (4096, 32, 32, 11008), "llama2-13b": (5120, 40, 40, 13824)}  # d, layers, heads, ffn


def make_layers(d, layers, heads, ffn, tp, dev, gen):
    def w(*shape):
        return (torch.randn(*shape, device=dev, generator=gen) / d ** 0.5).to(torch.bfloat16)
    hd, h = d // heads, heads // tp
    return [dict(n1=torch.ones(d, device=dev, dtype=torch.bfloat16), n2=torch.ones(d, device=dev, dtype=torch.bfloat16),
                 qkv=w(3 * h * hd, d), o=w(d, h * hd), gu=w(2 * ffn // tp, d), down=w(d, ffn // tp))
            for _ in range(layers)]


def norm(x, weight):
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)


def decode_step(x, layers, caches, pos, mode, reduce):
    """x (B, 1, d) through every block; mode "tp" | "spd" | "floor" (no communication at all)."""
    b = x.shape[0]
    for lw, (kc, vc) in zip(layers, caches):
        hd = kc.shape[-1]
        q, k, v = F.linear(norm(x, lw["n1"]), lw["qkv"]).view(b, 1, 3, -1, hd).permute(2, 0, 3, 1, 4)
        kc[:, :, pos] = k
        vc[:, :, pos] = v
        a = F.scaled_dot_product_attention(q, kc, vc).transpose(1, 2).reshape(b, 1, -1)
        y = F.linear(a, lw["o"])
        if mode == "tp":
            h = x + reduce(y)
            g, u = F.linear(norm(h, lw["n2"]), lw["gu"]).chunk(2, -1)
            x = h + reduce(F.linear(F.silu(g) * u, lw["down"]))
        else:  # SPD (and the floor's arithmetic): the MLP sees x + its own attention partial
            g, u = F.linear(norm(x + y, lw["n2"]), lw["gu"]).chunk(2, -1)
            z = y + F.linear(F.silu(g) * u, lw["down"])
            x = x + (z if mode == "floor" else reduce(z))
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama2-7b", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--allreduce", default="nccl", help="comma list of nccl, oneshot")
    ap.add_argument("--shard-of", type=int, default=1, help="one process: time the floor of a TP-N shard")
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1  # one process (TP 1 or --shard-of): no group
    rank, tp = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if torchrun else (0, args.shard_of)
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(dev)
    if torchrun:
        dist.init_process_group("nccl", device_id=dev, timeout=datetime.timedelta(seconds=300))
    d, n_layers, heads, ffn = SHAPES[args.shape]
    gen = torch.Generator(device=dev).manual_seed(rank)
    layers = make_layers(d, n_layers, heads, ffn, tp, dev, gen)
    shape = (args.batch, heads // tp, args.ctx + 1, d // heads)
    caches = [(torch.randn(shape, device=dev, dtype=torch.bfloat16, generator=gen),
               torch.randn(shape, device=dev, dtype=torch.bfloat16, generator=gen)) for _ in range(n_layers)]
    x = torch.randn(args.batch, 1, d, device=dev, dtype=torch.bfloat16, generator=torch.Generator(device=dev).manual_seed(0))
    pos = torch.tensor([args.ctx], device=dev)
    group = dist.group.WORLD if torchrun else None
    symm = None
    if torchrun and "oneshot" in args.allreduce:
        import torch.distributed._symmetric_memory as symm_mem
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
        symm = symm_mem.empty(args.batch * d, dtype=torch.bfloat16, device=dev)
        symm_mem.rendezvous(symm, group.group_name)
    reducers = {"nccl": lambda t: funcol.all_reduce(t, "sum", group),
                "oneshot": lambda t: torch.ops.symm_mem.one_shot_all_reduce_copy(
                    symm[:t.numel()].view_as(t), t, "sum", group.group_name)}
    kinds = args.allreduce.split(",") if torchrun else ["none"]
    runs = [(k, m) for k in kinds for m in ("tp", "spd")] if torchrun else []
    runs.append((kinds[0], "floor"))
    rows = []
    for kind, mode in runs:
        torch._dynamo.reset()
        step = torch.compile(decode_step, fullgraph=True, dynamic=False, mode="max-autotune-no-cudagraphs")
        reduce = reducers.get(kind)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                step(x, layers, caches, pos, mode, reduce)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step(x, layers, caches, pos, mode, reduce)
        for _ in range(10):
            graph.replay()
        times = []
        for _ in range(args.repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            graph.replay()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        times.sort()
        row = dict(impl="minimal_loop", shape=args.shape, tp=tp, shard_proxy=not torchrun and tp > 1,
                   p2p=os.environ.get("NCCL_P2P_DISABLE", "0") != "1", batch=args.batch, ctx=args.ctx,
                   allreduce=None if mode == "floor" else kind, mode=mode, ms_median=times[len(times) // 2],
                   ms_p90=times[int(0.9 * len(times))], gpu=torch.cuda.get_device_name(dev),
                   torch=torch.__version__, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        rows.append(row)
        if rank == 0:
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
        del graph
    if torchrun:
        dist.barrier()
        torch.cuda.synchronize()
    os._exit(0)  # destroy_process_group can hang after NCCL work in a CUDA graph (RESOURCES.md)


if __name__ == "__main__":
    main()
