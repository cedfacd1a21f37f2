"""The `eval` command: `python -m spd_ref eval --model smollm2 --tp 4 --spd-blocks 20,21 --tasks offline`.

In one process the model is simulated TP (spd_ref.hf) scored by lm-eval's HFLM; under torchrun each rank
scores its shard of the real runtime (spd_ref.evaluation.runtime) in lockstep and rank 0 reports.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from spd_ref.__main__ import CommandParser, block_list, check_model_args, number, output_file
from spd_ref.evaluation.evaluate import check_hub_for, evaluate_model, format_table, resolve_tasks, write_results
from spd_ref.models import MODEL_HELP
from spd_ref.tp import ALLREDUCE_KINDS, DEFAULT_ALLREDUCE, DEFAULT_TIMEOUT_S, in_torchrun


def check_args(args: argparse.Namespace) -> None:
    """Tasks, hub, model, TP degree, blocks and plan: all known before the model loads."""
    if args.plan and args.spd_blocks:
        raise ValueError(f"--plan {args.plan} and --spd-blocks both choose SPD blocks. Fix: give one of them.")
    args.task_names = resolve_tasks(args.tasks)
    check_hub_for(args.task_names)
    tp = int(os.environ["WORLD_SIZE"]) if in_torchrun() else args.tp  # under torchrun: the processes
    if in_torchrun() and args.tp not in (None, tp):
        raise ValueError(f"--tp {args.tp} but torchrun started {tp} processes. Fix: leave --tp out under torchrun, "
                         f"or start {args.tp} processes")
    check_model_args(args.model, [tp or 1], args.spd_blocks, args.plan, plan_tp=tp)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = CommandParser(prog="python -m spd_ref eval", checks=[check_args],
                      description="lm-eval accuracy and perplexity of a model or an SPD plan")
    p.add_argument("--model", default="smollm2", help=MODEL_HELP)
    p.add_argument("--plan", help="folder of an SPD plan (spd_ref.plan) to apply; sets tp and blocks")
    p.add_argument("--tp", type=number(int, 1), default=None,
                   help="simulated tensor-parallel degree (default 1, or the plan's)")
    p.add_argument("--spd-blocks", type=block_list, default="",
                   help="0-based blocks to give SPD (zero-shot), e.g. 1,3,5-7")
    p.add_argument("--tasks", default="offline", help="'offline', 'paper', or comma-separated task names")
    p.add_argument("--limit", type=number(int, 1), default=None, help="first N items of each task")
    p.add_argument("--batch-size", type=number(int, 1), default=16)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--allreduce", choices=ALLREDUCE_KINDS, default=DEFAULT_ALLREDUCE,
                   help="under torchrun: the sync-point all-reduce (see `generate --help`)")
    p.add_argument("--out", type=output_file, default="results/eval.jsonl", help="JSON lines file to append to")
    p.add_argument("--timeout", type=number(float, 1), default=DEFAULT_TIMEOUT_S,
                   help="under torchrun: process-group timeout in seconds, after which a rank left waiting for "
                        "a dead one gives up [ours]")
    return p.parse_args(argv)


def prepare_model(args: argparse.Namespace):
    """(model, tokenizer, metadata): load, then apply the plan or simulated TP with SPD blocks."""
    import torch

    from spd_ref.hf import apply_tp, decoder_layers, spd_blocks_of
    from spd_ref.models import load_model
    from spd_ref.plan import apply_plan, load_plan

    blocks = args.spd_blocks
    model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype))
    if args.plan:
        plan = load_plan(args.plan, model.config, tp_degree=args.tp)  # --tp, if given, must match
        apply_plan(model, plan)
        # e.g. "plan:hg+b2b/zs": the strategies of the blocks the plan puts SPD on
        strategy = "plan:" + "/".join(sorted({b.strategy for b in plan.blocks if b.chosen}))
    else:
        strategy = "zs" if blocks else "none"
        if (args.tp or 1) > 1 or blocks:
            apply_tp(model, args.tp or 1, blocks)
    spd = spd_blocks_of(model)
    meta = {"model": args.model, "tp": int(getattr(model, "tp_degree", None) or args.tp or 1),
            "strategy": strategy, "spd_ratio": len(spd) / len(decoder_layers(model)), "spd_blocks": spd,
            "plan": args.plan, "dtype": args.dtype, "limit": args.limit}
    return model, tokenizer, meta


def cli(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    names = args.task_names
    try:
        if in_torchrun():  # real TP: every rank scores its shard in lockstep; rank 0 reports
            from spd_ref.evaluation.runtime import evaluate_runtime

            rows, meta = evaluate_runtime(args, names)
            if meta is None:
                return 0
        else:
            model, tokenizer, meta = prepare_model(args)
            rows = evaluate_model(model, tokenizer, names, limit=args.limit, batch_size=args.batch_size)
    except (ValueError, RuntimeError, OSError) as err:  # bad arguments: say why, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"\nmodel {meta['model']}  tp {meta['tp']}  strategy {meta['strategy']}  "
          f"spd_ratio {meta['spd_ratio']:.2f}  blocks {meta['spd_blocks']}")
    print(format_table(rows))
    if rows:
        path = write_results(rows, args.out, **meta)
        print(f"appended {len(rows)} rows to {path}")
    return 0
