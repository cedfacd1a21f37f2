"""Block-to-block distillation (B2B) of an SPD block towards the original TP block (METHOD.md s.4).

    min_theta  MSE( SPD_block_theta(x), TP_block(x) ),   x = the block's calibration inputs

theta starts from the block's weights (after HG for extremely sensitive blocks). [ours] By default the
inputs x and targets TP_block(x) come from the original model (spd_ref.calibration.sensitivity.BlockInputs:
hidden[l] and hidden[l + 1]), so every block trains on its own (calibrate's `sequential` option feeds
the recovered blocks' outputs instead); every weight of the block is trained, norms included; the
optimizer is AdamW.

[ours] B2B cannot make a block worse, on text it did not train on:
- a fraction HOLDOUT of the windows (the last ones; at least one when there are two or more) is held
  out; after every epoch the held-out MSE is measured and the best weights seen (epoch 0, the
  starting weights, included) are kept;
- if even those do not lower the held-out MSE in the model's own dtype, the block keeps its weights.
- Training runs on an fp32 master copy of the block whatever the model dtype: AdamW steps of 5e-5
  on bf16 weights round away (the weights would not move); the result is cast back at the end.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from spd_ref.block import BlockMode

LR = 5e-5           # the paper's learning rate for LLaMA2 (1e-6 for OPT)
EPOCHS = 10         # the paper's epochs
BATCH_SIZE = 1      # [ours] windows per optimizer step: more steps from little CPU-sized data
WEIGHT_DECAY = 0.0  # [ours] decay would pull weights to zero, not to the original block
HOLDOUT = 0.25      # [ours] fraction of the windows held out to pick the epoch (and to refuse training)


@dataclass
class DistillResult:
    """loss_curve[e]: mean training MSE over epoch e; heldout_curve[e]: held-out MSE after e epochs
    (e = 0: before training); best_epoch: the epoch whose weights were kept (0: the block kept its
    own, `kept` False); mse_before/after: on all windows, in the model's dtype, no grad; refit:
    whether the kept weights were trained again on all windows."""

    loss_curve: list[float]
    mse_before: float
    mse_after: float
    heldout_curve: list[float] = field(default_factory=list)
    best_epoch: int = 0
    kept: bool = True
    heldout_windows: int = 0
    refit: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> None:
    if inputs.shape != targets.shape or inputs.dim() != 3:
        raise ValueError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must both be "
                         "(n_windows, seq_len, hidden): a block's inputs and the TP block's outputs on them.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (windows per step).")


@torch.no_grad()
def block_mse(layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, kwargs: dict[str, Any],
              batch_size: int = 4) -> float:
    """Mean squared error between the block's output (in its current mode) and `targets`."""
    _check(inputs, targets, batch_size)
    total = 0.0
    for i in range(0, inputs.shape[0], batch_size):
        x, y = inputs[i:i + batch_size], targets[i:i + batch_size]
        total += F.mse_loss(layer(x, **kwargs), y, reduction="sum").item()
    return total / targets.numel()


def split_windows(n: int, holdout: float) -> tuple[slice, slice]:
    """(train, held out) row slices: the last round(holdout * n) windows, at least 1 when n >= 2
    and holdout > 0; with one window (or holdout 0) both are all windows."""
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout={holdout} must be in [0, 1): the fraction of windows held out.")
    k = max(1, round(holdout * n)) if holdout > 0 and n >= 2 else 0
    return (slice(0, n - k), slice(n - k, n)) if k else (slice(0, n), slice(0, n))


def _fp32(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Layer-call arguments with floating tensors (rotary cos/sin, masks) in fp32 for the master copy."""
    def cast(v):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.float()
        return tuple(cast(t) for t in v) if isinstance(v, tuple) else v
    return {k: cast(v) for k, v in kwargs.items()}


def _train(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, kwargs: dict[str, Any], epochs: int,
           lr: float, batch_size: int, weight_decay: float, seed: int, bar, after_epoch=None) -> list[float]:
    """AdamW on every weight of `layer` (fp32 data); returns the mean training MSE of each epoch."""
    params = list(layer.parameters())
    for p in params:
        p.requires_grad_(True)  # [ours] every weight of the block, norms included
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    curve = []
    for epoch in range(1, epochs + 1):
        order, total = torch.randperm(x.shape[0], generator=generator), 0.0
        for i in range(0, len(order), batch_size):
            rows = order[i:i + batch_size]
            loss = F.mse_loss(layer(x[rows], **kwargs), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
            bar.update()
            bar.set_postfix(mse=f"{loss.item():.4g}")
        curve.append(total / x.shape[0])
        if after_epoch is not None:
            after_epoch(epoch)
    return curve


def distill_block(layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, kwargs: dict[str, Any],
                  lr: float = LR, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE,
                  weight_decay: float = WEIGHT_DECAY, seed: int = 0, mode: BlockMode = BlockMode.SPD,
                  holdout: float = HOLDOUT, refit: bool = False, progress: bool = True,
                  desc: str = "B2B") -> DistillResult:
    """Train `layer` (a simulated-TP decoder layer, in place) in `mode` to reproduce `targets`.

    `inputs` (n, T, d) are the block's inputs and `targets` the original TP block's outputs on them;
    `kwargs` are the layer-call arguments (BlockInputs.kwargs). The last `holdout` fraction of the
    windows picks the epoch and can refuse training (module docstring). [ours] refit=True: when
    training helped, train again from the block's own weights on ALL windows for the best epoch's
    count (the held-out windows' data back, at twice the time; that result is not itself checked on
    held-out text). Pass a copy (`copy.deepcopy(layer)`) to keep the model's own block.
    """
    _check(inputs, targets, batch_size)
    if lr <= 0 or epochs < 0:
        raise ValueError(f"lr={lr}, epochs={epochs}: need lr > 0 and epochs >= 0 (the paper: 5e-5, 10).")
    train, held = split_windows(inputs.shape[0], holdout)
    was_mode = layer.block_mode
    layer.block_mode = mode
    own = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    master = copy.deepcopy(layer).float().eval()  # no dropout: the target is the deterministic TP block
    x32, y32, kw32 = inputs.float(), targets.float(), _fp32(kwargs)
    held_curve, best = [block_mse(master, x32[held], y32[held], kw32)], {}

    def check(epoch: int) -> None:
        held_curve.append(block_mse(master, x32[held], y32[held], kw32))
        if held_curve[-1] < min(held_curve[:-1]):
            best.update(epoch=epoch, state={k: v.detach().clone() for k, v in master.state_dict().items()})

    # Training needs autograd even when the caller runs under no_grad (a notebook, an eval loop).
    grad_was = torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    try:
        before = block_mse(layer, inputs, targets, kwargs)
        held_before = block_mse(layer, inputs[held], targets[held], kwargs)
        steps = -(-(train.stop - train.start) // batch_size)
        bar = tqdm(total=epochs * steps, desc=desc, disable=not progress, leave=False)
        options = dict(lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed, bar=bar)
        curve = _train(master, x32[train], y32[train], kw32, epochs, after_epoch=check, **options)
        kept = False
        if best:  # cast into the model's dtype; keep it only if it still helps there
            layer.load_state_dict(best["state"])
            kept = block_mse(layer, inputs[held], targets[held], kwargs) < held_before
            if kept and refit and train != held:
                master = copy.deepcopy(layer).float().eval()
                master.load_state_dict(own)
                bar.reset(total=best["epoch"] * -(-inputs.shape[0] // batch_size))
                _train(master, x32, y32, kw32, best["epoch"], **options)
                layer.load_state_dict(master.state_dict())
            if not kept:
                layer.load_state_dict(own)
        bar.close()
        after = block_mse(layer, inputs, targets, kwargs) if kept else before
    finally:
        torch.set_grad_enabled(grad_was)
        layer.block_mode = was_mode
    return DistillResult(curve, before, after, held_curve, best.get("epoch", 0) if kept else 0, kept,
                         held.stop - held.start if train != held else 0, kept and refit and train != held)


def trained_copy(layer: nn.Module) -> nn.Module:
    """A detached copy of a decoder layer to train, so the model keeps its own weights."""
    return copy.deepcopy(layer)
