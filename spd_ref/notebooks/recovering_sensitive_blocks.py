"""Notebook 04 (recovering sensitive blocks): B2B and HG on single blocks, a recovered block swapped in,
its error in each mode, which heads each rank holds, and the figures (DESIGN.md, Notebooks).
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from spd_ref.block import BlockMode
from spd_ref.calibration.distill import DistillResult, block_mse
from spd_ref.hf import decoder_layers
from spd_ref.notebooks.figures import as_image, new_figure
from spd_ref.partition import Partition
from spd_ref.calibration.sensitivity import BlockInputs

if TYPE_CHECKING:
    from IPython.display import Image


@contextlib.contextmanager
def swapped_block(model: nn.Module, block: int, layer: nn.Module) -> Iterator[nn.Module]:
    """Put `layer` (a recovered copy) in place of decoder block `block` for the duration."""
    layers = decoder_layers(model)
    original, layers[block] = layers[block], layer
    try:
        yield model
    finally:
        layers[block] = original


def mse_in_mode(layer: nn.Module, cache: BlockInputs, block: int, mode: BlockMode = BlockMode.SPD) -> float:
    """MSE of `layer` run in `mode` on block `block`'s cached inputs against the TP block's outputs."""
    was, layer.block_mode = layer.block_mode, mode
    try:
        return block_mse(layer, cache.hidden[block], cache.hidden[block + 1], cache.kwargs)
    finally:
        layer.block_mode = was


def heads_by_rank(head_perm: Sequence[int], partition: Partition, kv_group: int) -> list[dict]:
    """Per rank: the query heads (and their KV heads) it holds before and after HG's permutation."""
    def kv(heads: list[int]) -> list[int]:
        return sorted({h // kv_group for h in heads})

    return [dict(rank=s.rank, heads_before=list(s.q_heads), kv_before=kv(list(s.q_heads)),
                 heads_after=[head_perm[p] for p in s.q_heads], kv_after=kv([head_perm[p] for p in s.q_heads]))
            for s in partition.shards]


def plot_head_grouping(dist: torch.Tensor, head_perm: Sequence[int], mlp_perm: Sequence[int],
                       mlp_scores: Sequence[Sequence[float]], partition: Partition) -> Image:
    """Map distances between heads in rank order before and after HG (rank blocks outlined: HG makes
    the heads inside a block far apart), and the MLP matching scores with the chosen assignment."""
    from matplotlib.patches import Rectangle

    fig, axes = new_figure(1, 3, figsize=(13, 3.8))
    for ax, perm, title in ((axes[0], list(range(len(head_perm))), "before HG"), (axes[1], head_perm, "after HG")):
        image = ax.imshow(dist[perm][:, perm].numpy(), cmap="viridis")
        for s in partition.shards:
            a, n = s.q_heads.start - 0.5, len(s.q_heads)
            ax.add_patch(Rectangle((a, a), n, n, fill=False, ec="w", lw=2))
        ax.set(xticks=range(len(perm)), xticklabels=perm, yticks=range(len(perm)), yticklabels=perm,
               xlabel="head (rank order)", title=f"attention-map distance, {title}")
    fig.colorbar(image, ax=axes[1], shrink=0.8)
    scores = np.array(mlp_scores)
    image = axes[2].imshow(scores, cmap="magma")
    axes[2].plot(list(mlp_perm), range(len(mlp_perm)), "c*", ms=14, label="chosen pairing")
    axes[2].set(xlabel="MLP shard m", ylabel="rank a (its head group)", xticks=range(len(scores)),
                yticks=range(len(scores)), title="mean ||MLP_m(Norm(X + Y_a))||")
    axes[2].legend(fontsize=7, loc="lower right")
    fig.colorbar(image, ax=axes[2], shrink=0.8)
    return as_image(fig)


def plot_loss_curves(runs: dict[str, DistillResult]) -> Image:
    """B2B training MSE per epoch (epoch 0: before training), one line per run, log scale."""
    fig, ax = new_figure(figsize=(6.5, 3.4))
    for i, (label, r) in enumerate(runs.items()):
        ax.plot(range(len(r.loss_curve) + 1), [r.mse_before] + r.loss_curve, marker="o", ms=3, color=f"C{i}",
                label=label)
        ax.plot([len(r.loss_curve)], [r.mse_after], "x", color=f"C{i}", ms=9)
    ax.set(yscale="log", xlabel="epoch", ylabel="block output MSE vs TP")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="x: MSE after training, no grad", title_fontsize=7)
    return as_image(fig)
