"""Recovering the chosen SPD blocks: HG and/or B2B on copies of the model's blocks (METHOD.md s.4-5).

`recover_block` repairs one block on the TP model's inputs; `recover_blocks` all of a plan's,
independently (the default) or [ours] sequentially, each block on the outputs of the recovered
blocks before it. Neither step can make a block worse on text it did not see: HG keeps a regrouping
only if it lowers the block's error (spd_ref.calibration.headgroup) and is undone if it raises the
error on B2B's held-out windows; B2B keeps its best held-out epoch or the block's own weights
(spd_ref.calibration.distill). A Checkpoint (spd_ref.calibration.resume) keeps each finished block.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from spd_ref.block import BlockMode
from spd_ref.calibration.activations import BlockInputs
from spd_ref.calibration.distill import (BATCH_SIZE, EPOCHS, HOLDOUT, LR, WEIGHT_DECAY, block_mse, distill_block,
                                         split_windows, trained_copy)
from spd_ref.calibration.headgroup import MAP_SAMPLES, RULE, head_grouping, tp_outputs
from spd_ref.calibration.resume import Checkpoint, Recovered
from spd_ref.hf import decoder_layers
from spd_ref.plan import block_prefix

TARGETS = ("block", "model")


def recover_layer(layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, kwargs: dict, strategy: str, *,
                  lr: float = LR, epochs: int = EPOCHS, b2b_batch_size: int = BATCH_SIZE,
                  weight_decay: float = WEIGHT_DECAY, map_samples: int = MAP_SAMPLES, hg_rule: str = RULE,
                  holdout: float = HOLDOUT, refit: bool = False, seed: int = 0, progress: bool = True,
                  desc: str = "B2B") -> tuple[nn.Module, Optional[dict], Optional[dict]]:
    """Recover a copy of one SPD block ("b2b", "hg" or "hg+b2b") on its inputs and TP targets.

    Before B2B, HG scores its candidates on the windows B2B trains on, and [ours] its choice is
    undone if it raises the error on B2B's held-out windows (a regrouping fitted to a few windows
    can). Returns the copy and the HG and B2B records (None where not run); the HG record includes
    the block's MSE on all windows before and after HG (zero-shot SPD) and whether HG was kept.
    """
    layer, hg, b2b = trained_copy(layer), None, None
    if strategy.startswith("hg"):
        layer.block_mode = BlockMode.SPD  # errors before and after HG show what HG alone changes
        zero_shot = block_mse(layer, inputs, targets, kwargs)
        train, held = split_windows(inputs.shape[0], holdout if strategy.endswith("b2b") else 0.0)
        own = {k: v.clone() for k, v in layer.state_dict().items()}
        held_before = block_mse(layer, inputs[held], targets[held], kwargs)
        hg = head_grouping(layer, inputs[train], kwargs, map_samples, rule=hg_rule).as_dict()
        hg["kept"] = train == held or block_mse(layer, inputs[held], targets[held], kwargs) <= held_before
        if not hg["kept"]:
            layer.load_state_dict(own)
        hg["mse_zero_shot"] = zero_shot
        hg["mse_after_hg"] = block_mse(layer, inputs, targets, kwargs)
    if strategy.endswith("b2b"):
        b2b = distill_block(layer, inputs, targets, kwargs, lr=lr, epochs=epochs, batch_size=b2b_batch_size,
                            weight_decay=weight_decay, holdout=holdout, refit=refit, seed=seed,
                            progress=progress, desc=desc).as_dict()
    return layer, hg, b2b


def _named(model: nn.Module, block: int, layer: nn.Module) -> dict[str, torch.Tensor]:
    prefix = block_prefix(model, block)
    return {prefix + name: p.detach().clone() for name, p in layer.named_parameters()}


def recover_block(model: nn.Module, cache: BlockInputs, block: int, strategy: str, **options) -> Recovered:
    """Recover one SPD block on a copy, on the TP model's inputs (`cache`, capture_block_inputs).

    Returns the copy's weights under the model's state-dict names and the HG and B2B records;
    `options` are recover_layer's keywords.
    """
    layer, hg, b2b = recover_layer(decoder_layers(model)[block], cache.block(block), cache.block(block + 1),
                                   cache.kwargs, strategy, desc=f"B2B block {block}", **options)
    return _named(model, block, layer), hg, b2b


def recover_blocks(model: nn.Module, cache: BlockInputs, strategies: dict[int, str], sequential: bool = False,
                   targets: str = "block", checkpoint: Optional[Checkpoint] = None,
                   **options) -> tuple[dict[str, torch.Tensor], dict[int, tuple[Optional[dict], Optional[dict]]]]:
    """Recover every SPD block of `strategies` (block -> "zs", "b2b", "hg" or "hg+b2b").

    sequential=False: each block trains on the TP model's inputs (METHOD.md s.4, independent blocks).
    [ours] sequential=True: block l trains on the outputs of blocks 0..l-1 as the plan will run them
    (SPD blocks already recovered), towards targets="block": the TP block's output on those same
    inputs (METHOD.md s.4's objective), or targets="model": the TP model's activation after block l,
    so that the block also learns to undo the drift of the SPD blocks before it.
    Returns the changed weights and each recovered block's (HG, B2B) records.
    """
    if targets not in TARGETS:
        raise ValueError(f"targets={targets!r} is unknown; use 'block' (the TP block on the same inputs) or "
                         "'model' (the TP model's activations).")
    keep = checkpoint or Checkpoint(None)
    weights, records, layers = {}, {}, decoder_layers(model)
    if not sequential:
        for l, strategy in strategies.items():
            if strategy != "zs":
                found, *records[l] = keep.block(l, lambda: recover_block(model, cache, l, strategy, **options))
                weights.update(found)
        return weights, {l: tuple(r) for l, r in records.items()}
    h = cache.block(0)
    for l in range(max(strategies, default=-1) + 1):
        layer, strategy = layers[l], strategies.get(l)
        if strategy not in (None, "zs"):
            def compute() -> Recovered:
                target = tp_outputs(layer, h, cache.kwargs) if targets == "block" else cache.block(l + 1)
                done, hg, b2b = recover_layer(layer, h, target, cache.kwargs, strategy, desc=f"B2B block {l}",
                                              **options)
                return _named(model, l, done), hg, b2b
            found, *records[l] = keep.block(l, compute)
            weights.update(found)
            layer = trained_copy(layer)  # the recovered block, to feed the blocks after it
            prefix = block_prefix(model, l)
            layer.load_state_dict({k[len(prefix):]: v for k, v in found.items()})
        was, layer.block_mode = layer.block_mode, BlockMode.SPD if l in strategies else BlockMode.TP
        with torch.no_grad():
            h = torch.cat([layer(x, **cache.kwargs) for x in h.split(cache.batch_size)])
        layer.block_mode = was
    return weights, {l: tuple(r) for l, r in records.items()}
