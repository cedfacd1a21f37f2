"""The all-reduce microbenchmark of `bench --ar-bench`: all-reduces in CUDA graphs, per kind.

For each `--allreduce` kind ("nccl": in-place NCCL all-reduce; "oneshot": the symmetric-memory
one-shot all-reduce of the sync points, up to its buffer size, spd_ref.tp), --ar-per-graph
all-reduces of one message size are captured in one graph and its replays timed; each size's sum is
checked once. spd_ref.latency.commcost fits the alpha-beta model to these rows.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist

from spd_ref.latency.schema import RowWriter, make_row
from spd_ref.latency.timing import graphed, summarize, time_calls
from spd_ref.tp import ONESHOT_MAX_BYTES

DEFAULT_AR_SIZES = ",".join(f"{2 ** k}" for k in range(13, 27))  # 8 KiB .. 64 MiB


def bench_allreduce(ctx, sizes: Iterable[int], dtype: torch.dtype, meta: dict, writer: RowWriter, args) -> None:
    """Time all-reduces of `size` bytes each, per kind; check the sum once per size."""
    if ctx.world_size == 1:
        if ctx.is_main:
            print("allreduce: one process, nothing to reduce: skipped", flush=True)
        return
    elem = torch.empty((), dtype=dtype).element_size()
    for asked in args.allreduce:
        ctx.use_allreduce(asked, dtype)
        kind = ctx.allreduce  # "auto" resolved
        for size in sizes:
            if kind == "oneshot" and size > ONESHOT_MAX_BYTES:
                continue  # larger messages go to NCCL (spd_ref.tp): nothing one-shot to time
            numel = max(1, size // elem)
            med, p90, graph = _time_size(ctx, kind, numel, dtype, args)
            nbytes = numel * elem
            busbw = nbytes * 2 * (ctx.world_size - 1) / ctx.world_size / (med * 1e-3) / 1e9
            writer.add(make_row(meta, kind="allreduce", impl="spd_ref", no_comm=False, bytes=nbytes,
                                compiled=False, cuda_graph=graph, ms_median=med, ms_p90=p90, allreduce=kind,
                                repeats=args.ar_repeats, busbw_gbps=busbw, ranks_agree=True, tag=args.tag))


def _time_size(ctx, kind: str, numel: int, dtype: torch.dtype, args) -> tuple[float, float, bool]:
    """(median ms, p90 ms, graphed) of one all-reduce of numel elements; raises on a wrong sum."""
    per_graph = args.ar_per_graph
    source = torch.randn(numel, device=ctx.device, dtype=dtype)
    buf = source.clone()

    def reduce_once() -> torch.Tensor:
        if kind == "nccl":  # in place
            dist.all_reduce(buf, group=ctx.group)
            return buf
        return ctx.sync(buf[None])  # out of place, as a sync point does it: buf keeps its values

    reduce_once()  # communicator (or symmetric buffer) set up outside any capture
    replay, _, graph = graphed(lambda: [reduce_once() for _ in range(per_graph)], ctx.device, warmup=1)
    # In place, each call grows the values N-fold: restore them (untimed) before each timed replay.
    times = time_calls(replay, ctx.device, args.warmup, args.ar_repeats, before=lambda: buf.copy_(source))
    buf.fill_(ctx.rank + 1)
    total = reduce_once()
    expected = ctx.world_size * (ctx.world_size + 1) / 2
    if not bool((total.float() == expected).all()):
        raise RuntimeError(f"{kind} all-reduce of {numel} elements gave a wrong sum (expected {expected})")
    med, p90 = summarize([t / per_graph for t in times])
    return med, p90, graph is not None
