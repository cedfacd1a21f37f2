"""Perplexity, the back-to-front sensitivity scan, the three classes, and choosing SPD blocks (METHOD.md s.3).

The scan puts SPD on blocks L-1, L-2, ..., 0 one at a time (each step keeps SPD on the blocks after
it) and records how much perplexity each new SPD block adds. Blocks before l are unchanged, so their
outputs are the plain TP model's: `capture_block_inputs` runs the TP model once and keeps the hidden
state entering every block; step l then runs only blocks l..L-1, the final norm and the lm_head.
That is L(L+1)/2 block evaluations and L+1 lm_head evaluations instead of L full forward passes
from the embeddings.

The same cache feeds B2B and HG (spd_ref.calibration.distill, spd_ref.calibration.headgroup): METHOD.md s.4 trains every
block on its inputs from the original model, which are exactly `BlockInputs.hidden[l]`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from spd_ref.block import BlockMode
# The activation cache lives in calibration.activations; BlockInputs, capture_block_inputs and
# layer_call_kwargs are imported here too, where the scan's users have always found them.
from spd_ref.calibration.activations import (BlockInputs, block_modes, capture_block_inputs, check_tokens,  # noqa: F401
                                             layer_call_kwargs, model_device, require_tp, restore_modes)
from spd_ref.hf import decoder_layers, set_spd_blocks
from spd_ref.plan import num_spd_blocks

def _head_nll(model: nn.Module, last_hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token negative log-likelihood of each window (summed over its positions) from the last
    block's output (final norm + lm_head): shape (B,)."""
    logits = model.get_output_embeddings()(model.model.norm(last_hidden)).float()
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    return nll.view(tokens.shape[0], -1).sum(1)


@torch.no_grad()
def suffix_window_nll(model: nn.Module, cache: BlockInputs, start: int) -> torch.Tensor:
    """Summed NLL of each calibration window (n,) when blocks start..L-1 run as the model is set now
    and blocks before `start` are taken from the cache (the plain TP model's activations)."""
    layers = decoder_layers(model)
    out = []
    for rows, h in cache.batches(start):
        for layer in layers[start:]:
            h = layer(h, **cache.kwargs)
        out.append(_head_nll(model, h, cache.tokens[rows]).cpu().double())
    return torch.cat(out)


def suffix_perplexity(model: nn.Module, cache: BlockInputs, start: int) -> float:
    """Perplexity of the calibration windows with blocks before `start` from the cache (suffix_window_nll)."""
    return math.exp(suffix_window_nll(model, cache, start).sum().item() / cache.tokens[:, 1:].numel())


@torch.no_grad()
def perplexity(model: nn.Module, tokens: torch.Tensor, batch_size: int = 4, progress: bool = False) -> float:
    """exp(mean next-token NLL) of the model on token windows (n, T), every position after the first.

    Works for any causal LM (plain, simulated TP/SPD, with or without a plan); the logits of one batch
    at a time keep memory at batch_size * T * vocab floats.
    """
    check_tokens(tokens, batch_size)
    tokens = tokens.to(model_device(model))
    nll = 0.0
    for batch in tqdm(tokens.split(batch_size), desc="perplexity", disable=not progress, leave=False):
        logits = model(input_ids=batch, use_cache=False).logits.float()
        nll += F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
    return math.exp(nll / tokens[:, 1:].numel())


@dataclass
class SensitivityScan:
    """Result of the back-to-front scan (METHOD.md s.3).

    base_ppl: the TP model (no SPD block). suffix_ppl[l]: SPD on blocks l..L-1 (suffix_ppl[L] = base_ppl).
    scores[l] = suffix_ppl[l] - suffix_ppl[l + 1]: the perplexity block l adds. window_nll[l]: each
    window's summed NLL under suffix l, and tokens_per_window, for the scan's noise
    (spd_ref.calibration.noise).
    """

    base_ppl: float
    suffix_ppl: list[float]
    scores: list[float]
    window_nll: list[list[float]] = field(default_factory=list)
    tokens_per_window: int = 0

    @property
    def relative(self) -> list[float]:
        """Scores as a fraction of the base perplexity (what tau1, tau2 compare against)."""
        return [s / self.base_ppl for s in self.scores]


@torch.no_grad()
def sensitivity_scan(model: nn.Module, cache: BlockInputs, mode: BlockMode = BlockMode.SPD,
                     progress: bool = True) -> SensitivityScan:
    """s_l = PPL(SPD on l..L-1) - PPL(SPD on l+1..L-1), for l = L-1 down to 0, on the cached windows.

    Block l's input is always the plain TP model's (cached): SPD only on l..L-1 leaves blocks 0..l-1
    unchanged. The model's SPD blocks are restored afterwards.
    """
    require_tp(model)
    layers, was = decoder_layers(model), block_modes(model)
    num = len(layers)
    if len(cache.hidden) != num + 1:
        raise ValueError(f"the cache holds {len(cache.hidden)} activations but the model has {num} blocks "
                         f"(expected {num + 1}). Fix: capture_block_inputs with this model.")
    count = cache.tokens.shape[1] - 1
    nll = [torch.zeros(0)] * (num + 1)
    nll[num] = suffix_window_nll(model, cache, num)
    bar = tqdm(reversed(range(num)), total=num, desc="sensitivity scan", disable=not progress)
    try:
        for l in bar:
            set_spd_blocks(model, range(l, num), mode)
            nll[l] = suffix_window_nll(model, cache, l)
            bar.set_postfix(block=l, ppl=f"{math.exp(nll[l].mean().item() / count):.3f}")
    finally:
        restore_modes(model, was)
    suffix = [math.exp(x.mean().item() / count) for x in nll]
    return SensitivityScan(suffix[num], suffix, [suffix[l] - suffix[l + 1] for l in range(num)],
                           [x.tolist() for x in nll], count)


class BlockClass(str, Enum):
    """METHOD.md s.3 classes; each calls for one recovery strategy (see STRATEGY)."""

    INSENSITIVE = "in-sensitive"
    SENSITIVE = "sensitive"
    EXTREME = "extremely sensitive"


STRATEGY = {BlockClass.INSENSITIVE: "zs", BlockClass.SENSITIVE: "b2b", BlockClass.EXTREME: "hg+b2b"}

TAU1 = 0.02   # [ours] 2% of the base perplexity per block: above the scan's noise at 8 x 256 tokens
#               (bootstrap 95% half-widths of SmolLM2's near-zero blocks at TP 4: median 1.6%; docs/calibration.md)
TAU2 = 0.05   # [ours] 5% of the base perplexity per block


def classify(scan: SensitivityScan, tau1: float = TAU1, tau2: float = TAU2) -> list[BlockClass]:
    """Class of every block from its relative score s_l / PPL_base.

    [ours] tau1 = 0.02 and tau2 = 0.05 are relative perplexity increases per block (the paper gives
    no values); relative, so that one pair of thresholds means the same for any model and text.
    tau1 sits above the scan's noise at calibrate's default 8 x 256 tokens (spd_ref.calibration.noise).
    Negative thresholds are allowed (e.g. tau2 < 0 sends every block to HG + B2B).
    """
    if not tau1 < tau2:
        raise ValueError(f"thresholds must satisfy tau1 < tau2; got tau1={tau1}, tau2={tau2}. "
                         "They are relative perplexity increases per block, e.g. tau1=0.005, tau2=0.05.")
    return [BlockClass.INSENSITIVE if r <= tau1 else BlockClass.SENSITIVE if r <= tau2 else BlockClass.EXTREME
            for r in scan.relative]


def baseline_blocks(kind: str, num_blocks: int, ratio: float, seed: Optional[int] = 0) -> list[int]:
    """Selections the sensitivity order is compared against: "first", "last" or "random" k blocks."""
    k = num_spd_blocks(ratio, num_blocks)
    if kind == "first":
        return list(range(k))
    if kind == "last":
        return list(range(num_blocks - k, num_blocks))
    if kind == "random":
        perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed or 0))
        return sorted(perm[:k].tolist())
    raise ValueError(f"kind={kind!r} is unknown; use 'first', 'last' or 'random'.")
