"""Timing on GPUs and CPUs (CUDA events around graph replays; perf_counter), and ending a process
that may hold NCCL state captured in a CUDA graph."""
from __future__ import annotations

import math
import os
import statistics
import sys
import time
import traceback
from typing import Callable, Optional

import torch
import torch.distributed as dist


def summarize(times_ms: list[float]) -> tuple[float, float]:
    """(median, p90) of a list of times."""
    ordered = sorted(times_ms)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return statistics.median(ordered), p90


def time_calls(run: Callable[[], None], device: torch.device, warmup: int, repeats: int,
               before: Optional[Callable[[], None]] = None) -> list[float]:
    """Milliseconds of each of `repeats` calls of `run` after `warmup` untimed ones.

    CUDA: events recorded around each call on the current stream (`before` runs outside them).
    CPU: perf_counter around each call.
    """
    for _ in range(warmup):
        if before:
            before()
        run()
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        for s, e in zip(starts, ends):
            if before:
                before()
            s.record()
            run()
            e.record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]
    times = []
    for _ in range(repeats):
        if before:
            before()
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def graphed(fn: Callable[[], object], device: torch.device, warmup: int = 3) -> tuple[Callable[[], None], float, object]:
    """(replay, seconds of warm-up, the graph) for `fn`: warm-up calls on a side stream (this is
    where torch.compile compiles), then one capture in a CUDA graph. On CPU: (fn, warm-up s, None)."""
    t0 = time.perf_counter()
    if device.type != "cuda":
        for _ in range(warmup):
            fn()
        return fn, time.perf_counter() - t0, None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph.replay, warm_s, graph


def us_per_call(calls: list[Callable[[], object]], device: torch.device, repeats: int) -> float:
    """Median microseconds per call of `calls` run back to back, captured as one CUDA graph on a GPU (a
    kernel microbenchmark: one call per weight or cache copy, so none is served from L2)."""
    replay, _, _ = graphed(lambda: [call() for call in calls], device, warmup=1)
    median, _ = summarize(time_calls(replay, device, warmup=1, repeats=repeats))
    return median * 1000 / len(calls)


def slowest_rank(ctx, times_ms: list[float]) -> tuple[float, float, Optional[list[float]]]:
    """(median, p90) of the rank with the largest median, and every rank's median (None with one
    rank). A TP step waits for its slowest rank at every sync point, so the floor (no sync point, each
    rank running free) is the slowest rank's compute, not rank 0's."""
    med, p90 = summarize(times_ms)
    if ctx.world_size == 1 or ctx.group is None:
        return med, p90, None
    mine = torch.tensor([med, p90], dtype=torch.float64, device=ctx.device)
    every = [torch.empty_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(every, mine, group=ctx.group)
    slowest = max(every, key=lambda t: float(t[0]))
    return float(slowest[0]), float(slowest[1]), [round(float(t[0]), 4) for t in every]


def ranks_agree(ctx, tensor: torch.Tensor, rtol: float = 1e-3) -> Optional[bool]:
    """Whether every rank holds the same tensor (TP replicates the block outputs and logits),
    compared through (sum, sum of squares). None with one rank."""
    if ctx.world_size == 1:
        return None
    t = tensor.float()
    stats = torch.stack([t.sum(), t.pow(2).sum()])
    hi, lo = stats.clone(), -stats.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=ctx.group)
    dist.all_reduce(lo, op=dist.ReduceOp.MAX, group=ctx.group)
    return bool(((hi + lo).abs() <= rtol * hi.abs().clamp_min(1e-6)).all())


def finish_process(code: int) -> None:
    """End this process now. Under torchrun: barrier so no rank leaves early, flush, os._exit:
    destroy_process_group() can hang after NCCL work was captured in a CUDA graph."""
    from spd_ref.tp import in_torchrun

    sys.stdout.flush()
    sys.stderr.flush()
    if not in_torchrun():
        return
    if code == 0 and dist.is_initialized():
        try:
            if torch.cuda.is_available() and dist.get_backend() == "nccl":
                dist.barrier(device_ids=[torch.cuda.current_device()])
                torch.cuda.synchronize()
            else:
                dist.barrier()
        except Exception:  # a barrier that fails must not turn success into a hang
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_then_exit(body: Callable[[], object]) -> int:
    """Run a benchmark's body and end the process (finish_process): 0; 2 after bad input (ValueError,
    FileNotFoundError: one `error:` line); 1 after anything else (with its traceback)."""
    code = 0
    try:
        body()
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    except Exception:
        traceback.print_exc()
        code = 1
    finish_process(code)
    return code
