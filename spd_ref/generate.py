"""`python -m spd_ref generate`: greedy generation with the TP runtime, SPD blocks switched per block.

    torchrun --standalone --nproc-per-node 4 -m spd_ref generate --model smollm2 --spd-blocks 10-29 \
        --prompt "The capital of Italy is"

Each process loads the checkpoint, keeps its own shard (spd_ref.model) and joins the process group
(gloo on CPU, NCCL on GPU). Without torchrun it runs as one process (TP degree 1). Rank 0 prints
the continuation and the decode latency. A rank that dies (killed, or an error) ends the whole job:
torchrun stops the others and names the failing rank; a rank left waiting in a collective gives up
after --timeout seconds.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

import torch

from spd_ref.__main__ import CommandParser, block_list, check_model_args, listed, number, output_file
from spd_ref.model import DEFAULT_LM_HEAD, LM_HEAD_MODES
from spd_ref.models import MODEL_HELP
from spd_ref.tp import (ALLREDUCE_KINDS, DEFAULT_ALLREDUCE, DEFAULT_TIMEOUT_S, in_torchrun, init_distributed,
                        require_torchrun, shutdown)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_args(args: argparse.Namespace) -> None:
    """Everything about the arguments that can be known before loading the model (its config only)."""
    world = int(os.environ["WORLD_SIZE"]) if in_torchrun() else 1
    if args.tp is not None:
        require_torchrun(args.tp)
    config = check_model_args(args.model, [world], args.spd_blocks, args.plan, plan_tp=world)
    if args.prompt_ids and max(args.prompt_ids) >= config.vocab_size:
        raise ValueError(f"--prompt-ids: token {max(args.prompt_ids)} is not in the vocabulary of {args.model!r} "
                         f"({config.vocab_size} tokens). Fix: give ids below {config.vocab_size}, or --prompt TEXT")
    positions = getattr(config, "max_position_embeddings", None)
    if positions and args.max_new_tokens >= positions:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens} does not fit the {positions} positions of "
                         f"{args.model!r} with a prompt. Fix: ask for fewer than {positions} tokens")


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m spd_ref generate", description=__doc__, checks=[check_args],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help=MODEL_HELP)
    p.add_argument("--prompt", default="The capital of France is Paris. The capital of Italy is")
    p.add_argument("--prompt-ids", type=listed(number(int, 0)), default=None,
                   help="comma-separated token ids instead of --prompt")
    p.add_argument("--max-new-tokens", type=number(int, 1), default=32)
    p.add_argument("--tp", type=number(int, 1), default=None,
                   help="expected TP degree; checked against the torchrun world size")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--spd-blocks", type=block_list, default="",
                       help="blocks that drop their attention sync, e.g. 0,2,10-29")
    group.add_argument("--plan", default=None, help="an SPD plan folder from `calibrate` (blocks and weights)")
    p.add_argument("--naive", action="store_true", help="drop the sync WITHOUT SPD's re-wiring (to show why not)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the block function")
    p.add_argument("--lm-head", choices=LM_HEAD_MODES, default=DEFAULT_LM_HEAD,
                   help="split: vocab-parallel head + one all-gather; replicated: no collective [ours]")
    p.add_argument("--allreduce", choices=ALLREDUCE_KINDS, default=DEFAULT_ALLREDUCE,
                   help=f"sync-point all-reduce [ours: {DEFAULT_ALLREDUCE} = oneshot (symmetric memory) on GPUs "
                        "with peer access, else nccl (gloo on CPUs)]")
    p.add_argument("--timeout", type=number(float, 1), default=DEFAULT_TIMEOUT_S,
                   help="process-group timeout in seconds: a rank that waits longer for the others gives up [ours]")
    p.add_argument("--save-logits", type=output_file, default=None,
                   help="rank 0 saves prefill and decode logits here (torch.save)")
    return p


def run(args: argparse.Namespace) -> Optional[dict]:
    """Generate on this rank; returns rank 0's result dict (None on other ranks)."""
    from spd_ref.block import BlockMode
    from spd_ref.models import load_model
    from spd_ref.model import TPTransformer

    start = time.perf_counter()
    ctx = init_distributed(args.timeout)
    try:
        dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if ctx.device.type == "cuda" else torch.float32)
        ctx.use_allreduce(args.allreduce, dtype)
        hf_model, tokenizer = load_model(args.model, dtype=torch.float32)
        overrides, blocks = None, args.spd_blocks
        if args.plan:
            from spd_ref.plan import load_plan

            plan = load_plan(args.plan, model_config=hf_model.config, tp_degree=ctx.world_size)
            overrides, blocks = plan.weights, plan.spd_blocks
        model = TPTransformer.from_hf(hf_model.config, hf_model.state_dict(), ctx, dtype, overrides)
        del hf_model
        model.set_spd_blocks(blocks, BlockMode.NAIVE if args.naive else BlockMode.SPD)
        model.lm_head_mode = args.lm_head
        if args.compile:
            model.compile_blocks()
        ids = (torch.tensor([args.prompt_ids]) if args.prompt_ids
               else tokenizer(args.prompt, return_tensors="pt").input_ids)
        if ctx.is_main:  # loading takes a while under torchrun: say when it is done
            print(f"loaded {args.model} as {ctx.world_size} shard(s) in {time.perf_counter() - start:.1f} s; "
                  f"generating {args.max_new_tokens} tokens", file=sys.stderr, flush=True)
        start = time.perf_counter()
        tokens, logits = model.generate(ids, args.max_new_tokens)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if not ctx.is_main:
            return None
        result = {"text": tokenizer.decode(tokens[0]), "tokens": tokens[0].tolist(), "tp": ctx.world_size,
                  "allreduce": ctx.allreduce,
                  "spd_blocks": blocks, "sync_points_per_token": model.sync_points_per_token,
                  "ms_per_token": 1000 * elapsed / args.max_new_tokens}
        if args.save_logits:
            torch.save({"logits": [l.float().cpu() for l in logits], **result}, args.save_logits)
        return result
    finally:
        shutdown(ctx)


def cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result is not None:
        print(result["text"])
        print(f"[TP {result['tp']} ({result['allreduce']}), SPD blocks {result['spd_blocks'] or 'none'}, "
              f"{result['sync_points_per_token']} sync points per token, "
              f"{result['ms_per_token']:.1f} ms/token incl. prefill]")
    return 0
