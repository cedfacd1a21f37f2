"""Latency of the TP runtime under torchrun: decode, prefill, and the all-reduce itself.

    python -m spd_ref.launch --nproc 4 bench --shape llama2-7b --batch 1,16 --ctx 512 \\
        --spd-ratios 0,0.25,0.5,0.75,1 --no-comm --ar-bench --out results/h100.jsonl

Each measurement is one JSON object per line in --out (appended; schema in results/README.md),
written by rank 0 as soon as it is measured, and summarized in a short table at the end.

How it times (DESIGN.md, performance protocol):
- GPU: random bf16 weights made on the device; prefill and decode steps are captured in CUDA
  graphs and the replays are timed with CUDA events (warm-up first, then --repeats replays: median
  and p90 of the slowest rank; ms_median_ranks has each rank's median). Decode runs the compiled
  block functions (`TPTransformer.compile_blocks`: one compile per block mode, all-reduce kind and
  batch, reused by every layer and every SPD ratio: a new ratio only re-captures the graph).
  Prefill runs the eager blocks in a graph (compiling every prompt length would cost more device
  time than it saves on long prompts), so prefill rows say compiled=false.
- Sync points use each --allreduce kind in turn (nccl, oneshot: spd_ref.tp); rows say which.
- [ours] Decode compiles with --compile-mode auto: inductor's max-autotune-no-cudagraphs at batch 1
  (decode GEMVs as tuned reduction kernels, faster than "default"), "default" at larger batches
  (results/h100/README.md, results/h200_x2_compute/README.md); the split lm_head is the default too.
- `--shard-of N` times, in one process, rank 0's shard of a TP-N model with no communication:
  the TP-N floor on one GPU (rows with shard_proxy=true), for work on compute without N GPUs.
- CPU (gloo): eager, time.perf_counter. These numbers only exercise the code path (tests).
- Helpers: timing in spd_ref.latency.timing, rows in .schema, shapes and SPD blocks in .workload.
- Decode is one token at position --ctx over a cache whose first --ctx positions hold random keys
  and values (the cost of a filled cache without compiling a prefill of that length), a cache of
  exactly ctx + 1 positions (the attention reads ctx + 1 keys).
- Per ratio r, SPD goes on round(r L) blocks: from --plan DIR (the least sensitive blocks, as
  calibrated), else **[ours]** spread evenly over the depth (`spread_blocks`). All blocks cost
  the same, so for latency only the count matters; the rule just makes runs reproducible.
- The floor (--no-comm) is the same model with every all-reduce replaced by an opaque no-op
  (`model.comm = "none"`, spd_ref.tp.skip_sync): wrong numbers, right cost of the compute alone,
  with the compiler fusing around the no-op exactly as around an all-reduce (TP 1: baseline only).
  The floor is measured first in each decode group (batch, cache length), and every later row is
  checked against it and the baseline: floor <= every communicating row, SPD 100% <= baseline
  (spd_ref.latency.consistency); rows that break it are flagged `consistent: false`, INCONSISTENT.
- The all-reduce microbenchmark (--ar-bench) times all-reduces of bf16 buffers (each --allreduce kind),
  --ar-per-graph of them captured in one graph, per message size; commcost fits these.

Every process ends itself: after NCCL work was captured in a CUDA graph,
`destroy_process_group()` can hang (RESOURCES.md), so under torchrun the end is barrier, flush,
`os._exit`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from spd_ref.__main__ import CommandParser, listed, number, output_file
from spd_ref.latency.allreduce import DEFAULT_AR_SIZES, bench_allreduce
from spd_ref.latency.consistency import check_row
from spd_ref.latency.schema import RowWriter, make_row, run_metadata
from spd_ref.latency.timing import graphed, ranks_agree, run_then_exit, slowest_rank, time_calls
from spd_ref.latency.workload import DTYPES, SHAPES, blocks_for_ratio, llama_config, parse_list
from spd_ref.model import (ATTENTION_IMPLS, COMPILE_MODES, DEFAULT_ATTENTION, DEFAULT_LINEAR, DEFAULT_LM_HEAD,
                           DEFAULT_NORM, LINEAR_IMPLS, LM_HEAD_MODES, NORM_IMPLS, TPTransformer, compile_mode_for)
from spd_ref.tp import ALLREDUCE_KINDS, DEFAULT_ALLREDUCE, TPContext

# ---- the model -----------------------------------------------------------------------------------
def variants(ctx, ratios: list[float], no_comm: bool, kinds: list[str]) -> list[tuple[str, Optional[float]]]:
    """(all-reduce kind, SPD ratio) pairs to measure; ratio None = the no-communication floor (once, and
    first, so that every later row can be checked against it; it has no all-reduce). One process: the
    baseline only; one process holding one shard of a larger TP degree (--shard-of): the floor only."""
    if ctx.world_size == 1:
        return [(kinds[0], 0.0)]
    if ctx.group is None:
        return [(kinds[0], None)]
    return ([(kinds[0], None)] if no_comm else []) + [(k, r) for k in kinds for r in sorted(ratios)]


def _apply_variant(model, ratio: Optional[float], plan_dir: Optional[str], kind: str) -> list[int]:
    n = len(model.blocks)
    blocks = [] if ratio is None else blocks_for_ratio(ratio, n, plan_dir)
    model.set_spd_blocks(blocks)
    model.comm = "none" if ratio is None else "allreduce"
    model.ctx.use_allreduce(kind, model.embed.dtype)
    return blocks


def bench_model(ctx, model, shape: str, meta: dict, writer: RowWriter, args) -> None:
    """Prefill (eager blocks in a graph), then decode (compiled unless --eager) for every variant."""
    cfg, dev = model.config, ctx.device
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    base = dict(impl="spd_ref", shape=shape, layers=cfg.num_hidden_layers, hidden=cfg.hidden_size,
                cuda_graph=dev.type == "cuda", tag=args.tag, lm_head=model.lm_head_mode,
                attention=model.attention, linear=model.linear, norm=model.norm)

    def row(kind: str, ratio: Optional[float], blocks: list[int], times: list[float], **kw) -> dict:
        med, p90, per_rank = slowest_rank(ctx, times)
        return make_row(meta, kind=kind, spd_ratio=ratio, no_comm=ratio is None, spd_blocks=blocks,
                        ms_median_ranks=per_rank,
                        sync_points_per_token=model.sync_points_per_token, ms_median=med, ms_p90=p90,
                        repeats=len(times), allreduce=None if ratio is None else ctx.allreduce, **base, **kw)

    def ids(batch: int, t: int) -> torch.Tensor:
        return torch.randint(0, cfg.vocab_size, (batch, t), device=dev, generator=gen)

    for batch in args.batch:
        for plen in args.prompt_lens:
            model.setup_cache(batch, plen)
            prompt, pos = ids(batch, plen), torch.arange(plen, device=dev)
            for kind, ratio in variants(ctx, args.prefill_ratios, args.no_comm, args.allreduce):
                blocks = _apply_variant(model, ratio, args.plan, kind)
                out = {}
                replay, _, graph = graphed(lambda: out.__setitem__("y", model(prompt, pos)), dev, warmup=1)
                times = time_calls(replay, dev, 1, args.prefill_repeats)
                agree = None if ratio is None else ranks_agree(ctx, out["y"])
                writer.add(row("prefill", ratio, blocks, times, batch=batch, prompt_len=plen,
                               sync_bytes=batch * plen * cfg.hidden_size * model.embed.element_size(),
                               compiled=False, ranks_agree=agree))
                del replay, graph, out
    compiled = args.compile == "on" or (args.compile == "auto" and dev.type == "cuda")
    if compiled:
        model.compile_blocks(args.compile_mode)
    for batch in args.batch:
        for ctx_len in args.ctx:
            model.setup_cache(batch, ctx_len + 1)
            # Random keys and values stand for a prefill of ctx tokens (same cost, no prefill compile).
            for cache in model.caches:
                for t in cache:
                    t.normal_(generator=gen)
            step_ids, step_pos, group = ids(batch, 1), torch.tensor([ctx_len], device=dev), []
            for kind, ratio in variants(ctx, args.spd_ratios, args.no_comm, args.allreduce):
                blocks, out = _apply_variant(model, ratio, args.plan, kind), {}
                replay, warm_s, graph = graphed(lambda: out.__setitem__("y", model(step_ids, step_pos)), dev)
                times = time_calls(replay, dev, args.warmup, args.repeats)
                agree = None if ratio is None else ranks_agree(ctx, out["y"])
                measured = row("decode", ratio, blocks, times, batch=batch, ctx=ctx_len,
                               sync_bytes=batch * cfg.hidden_size * model.embed.element_size(),
                               compiled=compiled, ranks_agree=agree, compile_s=round(warm_s, 2),
                               compile_mode=compile_mode_for(args.compile_mode, batch) if compiled else None)
                group.append(check_row(measured, group))  # floor <= this row, SPD 100% <= baseline
                writer.add(group[-1])
                del replay, graph, out


def build_model(ctx, shape: str, args):
    """(model, label): random weights of a named shape, or a checkpoint folder with --model."""
    dtype = DTYPES[args.dtype]
    if args.model:
        from transformers import AutoConfig
        from safetensors.torch import load_file

        folder = Path(args.model)
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"--model {args.model}: no *.safetensors files there. Fix: give a "
                                    "folder saved with save_pretrained (config.json + safetensors).")
        config = AutoConfig.from_pretrained(folder)
        if args.layers:
            config.num_hidden_layers = min(args.layers, config.num_hidden_layers)
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        model, label = TPTransformer.from_hf(config, state, ctx, dtype), folder.name
    else:
        model, label = TPTransformer.random(llama_config(shape, args.layers), ctx, dtype, seed=args.seed), shape
    model.lm_head_mode, model.attention, model.linear, model.norm = args.lm_head, args.attention, args.linear, args.norm
    return model, label


# ---- command line --------------------------------------------------------------------------------
def _kinds(text: str) -> list[str]:
    """An argument type: a comma list of all-reduce kinds."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in ALLREDUCE_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"{','.join(unknown) or repr(text)} is not an all-reduce kind. "
                                         f"Fix: a comma list of {', '.join(ALLREDUCE_KINDS)}")
    return kinds


def _lengths(text: str) -> list[int]:
    """An argument type: prompt lengths, or 'none' for no prefill."""
    return [] if text.strip().lower() == "none" else listed(number(int, 1))(text)


def _shapes(text: str) -> list[str]:
    """An argument type: a comma list of SHAPES."""
    shapes = parse_list(text, str)
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown shape {','.join(unknown)}. Fix: one of {', '.join(SHAPES)}, "
                                         "or --model PATH")
    return shapes


def _check(args: argparse.Namespace) -> None:
    if args.model and not Path(args.model).is_dir():
        raise ValueError(f"--model {args.model} is not a folder. Fix: a folder saved with save_pretrained")
    if args.shard_of > 1 and args.ar_bench:
        raise ValueError(f"--shard-of {args.shard_of} runs one process with no group: nothing to all-reduce. "
                         "Fix: leave out --ar-bench")


def parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m spd_ref bench", description=__doc__.split("\n\n")[0], checks=[_check])
    a = p.add_argument
    a("--shape", type=_shapes, default=None, help=f"comma list of {', '.join(SHAPES)} (default llama2-7b; none with "
                                                 "--ar-bench alone)")
    a("--model", default=None, help="a checkpoint folder (config.json + safetensors) instead of --shape")
    a("--layers", type=number(int, 1), default=None, help="keep only the first K blocks")
    a("--dtype", choices=sorted(DTYPES), default="bf16")
    a("--batch", type=listed(number(int, 1)), default="1,16", help="comma list of batch sizes")
    a("--prompt-lens", type=_lengths, default="128,2048", help="prefill prompt lengths ('none' to skip prefill)")
    a("--ctx", type=listed(number(int, 1)), default="512",
      help="comma list: tokens in the KV cache before the timed decode step")
    a("--spd-ratios", type=listed(number(float, 0, 1)), default="0,0.25,0.5,0.75,1",
      help="decode: shares of blocks with SPD")
    a("--prefill-ratios", type=listed(number(float, 0, 1)), default="0,1", help="prefill: shares of blocks with SPD")
    a("--plan", default=None, help="SPD plan folder: blocks by sensitivity instead of spread evenly")
    a("--no-comm", action="store_true", help="also measure the floor: every all-reduce removed")
    a("--compile", choices=("auto", "on", "off"), default="auto",
      help="torch.compile the decode blocks: auto = on GPUs only (CPU compiles are for tests)")
    a("--compile-mode", default="auto", choices=["auto", *COMPILE_MODES],
      help="torch.compile setting of the decode blocks (spd_ref.model.COMPILE_MODES) [ours: auto = max-autotune at "
           "batch 1 (faster than 'default': H100 5-10%%, H200 1-11%%), default at larger batches (H200 batch 16: "
           "16%% faster)]; rows record the mode that ran; CUDA graphs either way")
    a("--allreduce", type=_kinds, default=DEFAULT_ALLREDUCE,
      help=f"comma list of sync-point all-reduces: {', '.join(ALLREDUCE_KINDS)} [ours: {DEFAULT_ALLREDUCE} = oneshot "
           "where it runs, measured fastest on 2 x H200, else nccl]. oneshot = PyTorch symmetric-memory one-shot "
           "all-reduce (GPUs with peer access; no multicast)")
    a("--lm-head", choices=LM_HEAD_MODES, default=DEFAULT_LM_HEAD,
      help="[ours: split] split = vocab-parallel lm_head + one all-gather of the logits; "
           "replicated = every rank reads the whole head, no collective")
    a("--attention", choices=ATTENTION_IMPLS, default=DEFAULT_ATTENTION,
      help=f"[ours: {DEFAULT_ATTENTION}] decode attention: sdpa = the library kernel, math = spelled out, flex = "
           "FlexAttention, triton = spd_ref.kernels.splitkv (split-KV), auto = triton at one row, else sdpa")
    a("--linear", choices=LINEAR_IMPLS, default=DEFAULT_LINEAR,
      help=f"[ours: {DEFAULT_LINEAR}] projections of <= 16 rows: torch = F.linear, triton = spd_ref.kernels.gemv")
    a("--norm", choices=NORM_IMPLS, default=DEFAULT_NORM, help=f"[ours: {DEFAULT_NORM}] RMSNorm: torch ops, or "
      "triton = spd_ref.kernels.rmsnorm, one kernel the compiler does not fuse into the next GEMV")
    a("--shard-of", type=number(int, 1), default=1, metavar="N",
      help="one process, no torchrun: time rank 0's shard of a TP-N model with no communication "
           "(the per-GPU compute of TP N on one GPU; floor rows only, shard_proxy=true)")
    a("--eager", dest="compile", action="store_const", const="off",
      help="same as --compile off (CUDA graphs are still captured on GPUs)")
    a("--repeats", type=number(int, 1), default=100, help="timed decode steps per variant")
    a("--warmup", type=number(int, 0), default=10, help="untimed replays before timing")
    a("--prefill-repeats", type=number(int, 1), default=5, help="timed prefills per variant")
    a("--ar-bench", action="store_true", help="run the all-reduce microbenchmark (every --allreduce kind)")
    a("--ar-sizes", default=DEFAULT_AR_SIZES, help="all-reduce message sizes in bytes (K/M suffixes)")
    a("--ar-per-graph", type=number(int, 1), default=10, help="all-reduces captured per graph")
    a("--ar-repeats", type=number(int, 1), default=30, help="timed graph replays per size")
    a("--seed", type=int, default=0)
    a("--tag", default=None, help="free text stored in every row (e.g. the sweep phase)")
    a("--out", type=output_file, default="results/bench.jsonl", help="JSONL file to append the rows to")
    return p


def shard_context(ctx, shard_of: int):
    """--shard-of N: this lone process plays rank 0 of N (no process group; only the floor runs)."""
    if shard_of == 1:
        return ctx
    if shard_of < 1:
        raise ValueError(f"--shard-of {shard_of}: give a TP degree of at least 1")
    if ctx.world_size != 1:
        raise ValueError(f"--shard-of {shard_of} runs in one process, this run has {ctx.world_size}. "
                         "Fix: run it without torchrun, or with launch --nproc 1")
    return TPContext(0, shard_of, ctx.local_rank, ctx.device, None)


def run(args) -> list[dict]:
    from spd_ref.tp import init_distributed

    ctx = shard_context(init_distributed(), args.shard_of)
    dtype = DTYPES[args.dtype]
    writer = RowWriter(args.out, ctx.is_main)
    meta = run_metadata(ctx, dtype)
    if ctx.is_main:
        print(f"bench: tp={ctx.world_size} p2p={meta['p2p']} on {meta['gpu']} torch {meta['torch']} "
              f"nccl {meta['nccl']} -> {args.out}", flush=True)
    if args.ar_bench:
        bench_allreduce(ctx, parse_list(args.ar_sizes, int), dtype, meta, writer, args)
    shapes = [args.model] if args.model else args.shape or ([] if args.ar_bench else ["llama2-7b"])
    for shape in shapes:
        t0 = time.perf_counter()
        model, label = build_model(ctx, shape, args)
        bench_model(ctx, model, label, meta, writer, args)
        del model
        torch._dynamo.reset()  # one shape's compiled variants must not count against the next's limit
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        if ctx.is_main:
            print(f"bench: {label} done in {time.perf_counter() - t0:.0f} s", flush=True)
    return writer.rows


def cli(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    return run_then_exit(lambda: run(args))


if __name__ == "__main__":
    sys.exit(cli())
