"""lm-eval scoring through the torchrun runtime: real multi-process accuracy of an SPD model.

`RuntimeHFLM` is lm-eval's own HFLM (same tokenization, batching and right-padding, so scores are
comparable item by item with the simulated model), with the forward pass replaced by this rank's
shard of the TP runtime. Every rank runs the same evaluation in lockstep: the requests, their order
and their batches are identical on all ranks, so each batch's all-reduces pair up across processes.
lm-eval treats each rank as a single process (rank 0 of 1): the model is split, the data is not.
"""
from __future__ import annotations

import torch
from lm_eval.models.huggingface import HFLM

from .model import TPTransformer


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
