"""lm-eval scoring through the torchrun runtime: real multi-process accuracy of an SPD model.

`RuntimeHFLM` is lm-eval's own HFLM (same tokenization, batching and right-padding, so scores are
comparable item by item with the simulated model), with the forward pass replaced by this rank's
shard of the TP runtime. Every rank runs the same evaluation in lockstep: the requests, their order
and their batches are identical on all ranks, so each batch's all-reduces pair up across processes.
lm-eval treats each rank as a single process (rank 0 of 1): the model is split, the data is not.
"""
from __future__ import annotations

from typing import Optional

import torch
from lm_eval.models.huggingface import HFLM

from spd_ref.model import TPTransformer


class RuntimeHFLM(HFLM):
    def __init__(self, runtime: TPTransformer, pretrained, tokenizer, batch_size: int = 16, **kwargs):
        # `pretrained` (the full transformers model) only supplies config and tokenizer details to
        # HFLM; every forward pass below goes through `runtime`.
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, batch_size=batch_size, **kwargs)
        self.runtime = runtime

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        batch, length = inps.shape
        self.runtime.setup_cache(batch, length)  # a fresh cache: each call is an independent prefill
        pos = torch.arange(length, device=self.runtime.ctx.device)
        return self.runtime(inps.to(self.runtime.ctx.device), pos).float().to(inps.device)

    def _model_generate(self, *args, **kwargs):
        raise NotImplementedError("generation tasks are not wired to the TP runtime; score them with the "
                                  "simulated model (python -m spd_ref eval without torchrun)")


def evaluate_runtime(args, tasks: list[str]) -> tuple[list[dict], Optional[dict]]:
    """`python -m spd_ref eval` under torchrun: (rows, metadata) on rank 0, ([], None) elsewhere.

    Each process loads the checkpoint, keeps its shard (with the plan's weights, if any) and joins
    the process group; the TP degree is the number of processes.
    """
    from spd_ref.evaluation.evaluate import evaluate_lm
    from spd_ref.models import load_model
    from spd_ref.tp import init_distributed, shutdown

    ctx = init_distributed(args.timeout)
    try:
        dtype = getattr(torch, args.dtype)
        ctx.use_allreduce(args.allreduce, dtype)
        hf_model, tokenizer = load_model(args.model, dtype=dtype)
        blocks, overrides, strategy = args.spd_blocks, None, "zs" if args.spd_blocks else "none"
        if args.plan:
            from spd_ref.plan import load_plan

            plan = load_plan(args.plan, hf_model.config, tp_degree=ctx.world_size)
            blocks, overrides = plan.spd_blocks, plan.weights
            strategy = "plan:" + "/".join(sorted({b.strategy for b in plan.blocks if b.chosen}))
        runtime = TPTransformer.from_hf(hf_model.config, hf_model.state_dict(), ctx, dtype, overrides)
        runtime.set_spd_blocks(blocks)
        rows = evaluate_lm(RuntimeHFLM(runtime, hf_model, tokenizer, args.batch_size), tasks, args.limit)
        meta = {"model": args.model, "tp": ctx.world_size, "strategy": strategy, "runtime": "torchrun",
                "allreduce": ctx.allreduce,
                "spd_ratio": len(blocks) / hf_model.config.num_hidden_layers, "spd_blocks": sorted(blocks),
                "plan": args.plan, "dtype": args.dtype, "limit": args.limit}
        return (rows, meta) if ctx.is_main else ([], None)
    finally:
        shutdown(ctx)
