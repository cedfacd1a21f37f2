"""Block-to-block distillation (B2B) of an SPD block towards the original TP block (METHOD.md s.4).

    min_theta  MSE( SPD_block_theta(x), TP_block(x) ),   x = the block's calibration inputs

theta starts from the block's weights (after HG for extremely sensitive blocks). [ours] The inputs x
and targets TP_block(x) come from the original model (spd_ref.calibration.sensitivity.BlockInputs: hidden[l] and
hidden[l + 1]), so every block trains on its own, independently of the others; every weight of the
block is trained, norms included; the optimizer is AdamW.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
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



@dataclass
class DistillResult:
    """loss_curve[e]: mean training MSE over epoch e; mse_before/after: on the same inputs, no grad."""

    loss_curve: list[float]
    mse_before: float
    mse_after: float

    def as_dict(self) -> dict[str, Any]:
        return {"loss_curve": self.loss_curve, "mse_before": self.mse_before, "mse_after": self.mse_after}


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


def distill_block(layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, kwargs: dict[str, Any],
                  lr: float = LR, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE,
                  weight_decay: float = WEIGHT_DECAY, seed: int = 0, mode: BlockMode = BlockMode.SPD,
                  progress: bool = True, desc: str = "B2B") -> DistillResult:
    """Train `layer` (a simulated-TP decoder layer, in place) in `mode` to reproduce `targets`.

    `inputs` (n, T, d) are the block's inputs and `targets` the original TP block's outputs on them;
    `kwargs` are the layer-call arguments (BlockInputs.kwargs). Pass a copy
    (`copy.deepcopy(layer)`) to keep the model's own block.
    """
    _check(inputs, targets, batch_size)
    if lr <= 0 or epochs < 0:
        raise ValueError(f"lr={lr}, epochs={epochs}: need lr > 0 and epochs >= 0 (the paper: 5e-5, 10).")
    was_mode, was_training = layer.block_mode, layer.training
    layer.block_mode = mode
    layer.eval()  # no dropout: the target is the deterministic TP block
    params = [p for p in layer.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)  # [ours] every weight of the block, norms included
    # Training needs autograd even when the caller runs under no_grad (a notebook, an eval loop).
    grad_was = torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    try:
        before = block_mse(layer, inputs, targets, kwargs)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        generator = torch.Generator().manual_seed(seed)
        curve = []
        steps = -(-inputs.shape[0] // batch_size)
        bar = tqdm(total=epochs * steps, desc=desc, disable=not progress, leave=False)
        for _ in range(epochs):
            order, total = torch.randperm(inputs.shape[0], generator=generator), 0.0
            for i in range(0, len(order), batch_size):
                rows = order[i:i + batch_size]
                loss = F.mse_loss(layer(inputs[rows], **kwargs), targets[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(rows)
                bar.update()
                bar.set_postfix(mse=f"{loss.item():.4g}")
            curve.append(total / inputs.shape[0])
        bar.close()
        after = block_mse(layer, inputs, targets, kwargs)
    finally:
        torch.set_grad_enabled(grad_was)
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        layer.block_mode = was_mode
        layer.train(was_training)
    return DistillResult(curve, before, after)


def trained_copy(layer: nn.Module) -> nn.Module:
    """A detached copy of a decoder layer to train, so the model keeps its own weights."""
    return copy.deepcopy(layer)
