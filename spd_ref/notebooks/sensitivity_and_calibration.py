"""Notebook 03 (sensitivity and calibration): the sensitivity scan's figure and classes, the choice of
SPD blocks against other selections, and the zero-shot plan (DESIGN.md, Notebooks).
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from spd_ref.hf import set_spd_blocks, spd_blocks_of
from spd_ref.notebooks.figures import as_image, new_figure, plain_log_ticks
from spd_ref.plan import BlockRecord, Plan, config_signature, package_versions, weight_fingerprint
from spd_ref.calibration.sensitivity import (STRATEGY, BlockClass, BlockInputs, SensitivityScan, baseline_blocks, suffix_perplexity)
from spd_ref.plan import choose_blocks

if TYPE_CHECKING:
    from IPython.display import Image

CLASS_COLORS = {BlockClass.INSENSITIVE: "C2", BlockClass.SENSITIVE: "C1", BlockClass.EXTREME: "C3"}
SELECTIONS = ("sensitivity", "first", "last", "random")


def block_ranges(blocks: Iterable[int]) -> str:
    """[0, 1, 2, 4, 6, 7] -> '0-2, 4, 6-7'."""
    runs = [[b for _, b in g] for _, g in itertools.groupby(enumerate(sorted(blocks)), lambda ib: ib[1] - ib[0])]
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs) or "-"



def plot_sensitivity(scan: SensitivityScan, classes: Sequence[BlockClass], tau1: float, tau2: float) -> Image:
    """Left: s_l / PPL_TP per block, coloured by class, thresholds dashed (symlog: the first blocks are
    orders of magnitude above the rest). Right: the scan's running perplexity PPL(SPD on l..L-1)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, (left, right) = new_figure(1, 2, figsize=(12, 3.6))
    blocks = np.arange(len(scan.scores))
    left.bar(blocks, 100 * np.array(scan.relative), color=[CLASS_COLORS[c] for c in classes])
    left.axhline(100 * tau1, ls=":", lw=1, color="k")
    left.axhline(100 * tau2, ls="--", lw=1, color="k")
    left.set(xlabel="block l", ylabel=r"$s_l$ / PPL$_{TP}$ (%)", xticks=blocks[::2],
             ylim=(min(-1.0, 150 * min(scan.relative)), None))
    left.set_yscale("symlog", linthresh=1.0)
    handles = [Patch(color=CLASS_COLORS[c], label=f"{c.value} ({STRATEGY[c]})") for c in BlockClass]
    left.legend(handles=handles + [Line2D([], [], ls=ls, color="k", label=f"{name} = {100 * t:g}%") for ls, name, t in
                                   ((":", r"$\tau_1$", tau1), ("--", r"$\tau_2$", tau2))], fontsize=7, ncol=2)
    right.plot(blocks, scan.suffix_ppl[:-1], marker=".", color="C0")
    right.axhline(scan.base_ppl, ls="--", color="C7", lw=1, label=f"TP, no SPD ({scan.base_ppl:.2f})")
    right.set(yscale="log", xlabel="l (SPD on blocks l..L-1; the scan runs right to left)",
              ylabel="calibration perplexity")
    right.invert_xaxis()
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3, axis="y")
    plain_log_ticks(right)
    return as_image(fig)


def class_summary(scan: SensitivityScan, classes: Sequence[BlockClass]) -> list[dict]:
    """Per class: its strategy, how many blocks, which, and the range of their relative scores."""
    held = {c: [l for l, k in enumerate(classes) if k is c] for c in BlockClass}
    return [dict(block_class=c.value, strategy=STRATEGY[c], count=len(ls), blocks=block_ranges(ls),
                 min_rel=min((scan.relative[l] for l in ls), default=None),
                 max_rel=max((scan.relative[l] for l in ls), default=None)) for c, ls in held.items()]


def selection_blocks(kind: str, scores: Sequence[float], ratio: float, seed: int = 0) -> list[int]:
    """SPD blocks at `ratio`: "sensitivity" (the scan's least sensitive) or a baseline_blocks kind."""
    return choose_blocks(scores, ratio) if kind == "sensitivity" else baseline_blocks(kind, len(scores), ratio, seed)


@torch.no_grad()
def selection_perplexity(model: nn.Module, cache: BlockInputs, blocks: Sequence[int]) -> float:
    """Perplexity of the cached windows with SPD on `blocks` (model under apply_tp). The blocks before the
    first SPD block are plain TP, so their outputs come from the cache (exact, and cheaper)."""
    was = spd_blocks_of(model)
    set_spd_blocks(model, blocks)
    try:
        return suffix_perplexity(model, cache, min(blocks, default=len(cache.hidden) - 1))
    finally:
        set_spd_blocks(model, was)


def compare_selections(model: nn.Module, cache: BlockInputs, scores: Sequence[float], ratios: Sequence[float],
                       kinds: Sequence[str] = SELECTIONS, seed: int = 0) -> list[dict]:
    """Perplexity of every selection kind at every ratio (one row each)."""
    picks = [(ratio, kind, selection_blocks(kind, scores, ratio, seed)) for ratio in ratios for kind in kinds]
    return [dict(ratio=ratio, selection=kind, spd_blocks=len(blocks), blocks=block_ranges(blocks),
                 ppl=selection_perplexity(model, cache, blocks)) for ratio, kind, blocks in picks]


def plot_selections(rows: list[dict], base_ppl: float) -> Image:
    """Grouped bars: perplexity per selection kind at each ratio; dashed: no SPD."""
    fig, ax = new_figure(figsize=(7, 3.2))
    ratios, kinds = sorted({r["ratio"] for r in rows}), list(dict.fromkeys(r["selection"] for r in rows))
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        ys = [next(r["ppl"] for r in rows if (r["ratio"], r["selection"]) == (x, kind)) for x in ratios]
        ax.bar(np.arange(len(ratios)) + (i - (len(kinds) - 1) / 2) * width, ys, width, label=kind, color=f"C{i}")
    ax.axhline(base_ppl, ls="--", color="k", lw=1, label="TP, no SPD")
    ax.set(yscale="log", xticks=range(len(ratios)), xticklabels=[f"SPD ratio {r:.0%}" for r in ratios],
           ylabel="held-out perplexity")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, title="blocks chosen by", title_fontsize=7)
    plain_log_ticks(ax)
    return as_image(fig)


def zero_shot_plan(model: nn.Module, scan: SensitivityScan, classes: Sequence[BlockClass], tp_degree: int,
                   ratio: float, settings: dict, model_id: str) -> Plan:
    """The plan `calibrate(..., b2b=False, hg=False)` writes, from a scan already made: SPD on the
    round(ratio L) least sensitive blocks, every one zero-shot, so no changed weights."""
    chosen = choose_blocks(scan.scores, ratio)
    records = [BlockRecord(l, s, r, c.value, "zs", l in chosen)
               for l, (s, r, c) in enumerate(zip(scan.scores, scan.relative, classes))]
    settings = dict(settings, ratio=ratio, b2b=False, hg=False, suffix_ppl=scan.suffix_ppl)
    return Plan(model_id, tp_degree, len(scan.scores), config_signature(model.config), weight_fingerprint(model),
                scan.base_ppl, chosen, records, settings, package_versions())
