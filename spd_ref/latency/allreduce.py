"""The all-reduce microbenchmark of `bench --allreduce`: in-place NCCL all-reduces in CUDA graphs.

--ar-per-graph all-reduces of one message size are captured in one graph and its replays timed;
each size's sum is checked once. spd_ref.latency.commcost fits the alpha-beta model to these rows.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist

from spd_ref.latency.schema import RowWriter, make_row
from spd_ref.latency.timing import graphed, summarize, time_calls

DEFAULT_AR_SIZES = ",".join(f"{2 ** k}" for k in range(13, 27))  # 8 KiB .. 64 MiB


def bench_allreduce(ctx, sizes: Iterable[int], dtype: torch.dtype, meta: dict, writer: RowWriter, args) -> None:
    """Time in-place all-reduces of `size` bytes each; check the sum once per size."""
    if ctx.world_size == 1:
        if ctx.is_main:
            print("allreduce: one process, nothing to reduce: skipped", flush=True)
        return
    elem = torch.empty((), dtype=dtype).element_size()
    per_graph = args.ar_per_graph
    for size in sizes:
        numel = max(1, size // elem)
        source = torch.randn(numel, device=ctx.device, dtype=dtype)
        buf = source.clone()

        def reduce_all() -> None:
            for _ in range(per_graph):
                dist.all_reduce(buf, group=ctx.group)

        dist.all_reduce(buf, group=ctx.group)  # communicator set up outside any capture
        replay, _, graph = graphed(reduce_all, ctx.device, warmup=1)
        # Each call grows the values N-fold: restore them (untimed) before each timed replay.
        times = time_calls(replay, ctx.device, args.warmup, args.ar_repeats, before=lambda: buf.copy_(source))
        med, p90 = summarize([t / per_graph for t in times])
        buf.fill_(ctx.rank + 1)
        dist.all_reduce(buf, group=ctx.group)
        expected = ctx.world_size * (ctx.world_size + 1) / 2
        if not bool((buf.float() == expected).all()):
            raise RuntimeError(f"all-reduce of {size} bytes gave a wrong sum (expected {expected})")
        nbytes = numel * elem
        busbw = nbytes * 2 * (ctx.world_size - 1) / ctx.world_size / (med * 1e-3) / 1e9
        writer.add(make_row(meta, kind="allreduce", impl="spd_ref", no_comm=False, bytes=nbytes,
                            compiled=False, cuda_graph=graph is not None, ms_median=med, ms_p90=p90,
                            repeats=args.ar_repeats, busbw_gbps=busbw, ranks_agree=True, tag=args.tag))
        del replay, graph
