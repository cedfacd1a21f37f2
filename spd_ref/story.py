"""What notebooks 03 (sensitivity and calibration), 04 (recovering sensitive blocks) and 05 (latency and
accuracy) call, so that their cells stay short (DESIGN.md, Notebooks). Figures come back as images
(walkthrough.as_image), so the executed notebooks store them and read well as static pages.
"""
from __future__ import annotations

import contextlib
import itertools
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from .block import BlockMode
from .distill import DistillResult, block_mse
from .hf import decoder_layers, set_spd_blocks, spd_blocks_of
from .latency_report import measured_table
from .partition import Partition
from .plan import BlockRecord, Plan, config_signature, package_versions, weight_fingerprint
from .predict import PRIMARY
from .sensitivity import (STRATEGY, BlockClass, BlockInputs, SensitivityScan, baseline_blocks, choose_blocks,
                          suffix_perplexity)
from .walkthrough import DecodeCostModel, _figure, as_image

if TYPE_CHECKING:
    from IPython.display import Image
    from ipywidgets import interactive

RESULTS = Path(__file__).resolve().parent.parent / "results"
CLASS_COLORS = {BlockClass.INSENSITIVE: "C2", BlockClass.SENSITIVE: "C1", BlockClass.EXTREME: "C3"}
SELECTIONS = ("sensitivity", "first", "last", "random")


def block_ranges(blocks: Iterable[int]) -> str:
    """[0, 1, 2, 4, 6, 7] -> '0-2, 4, 6-7'."""
    runs = [[b for _, b in g] for _, g in itertools.groupby(enumerate(sorted(blocks)), lambda ib: ib[1] - ib[0])]
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs) or "-"


def _plain_log_ticks(ax) -> None:
    """Tick labels of a log y axis as plain numbers (20, 30, 100), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FuncFormatter(lambda v, _: f"{v:g}"))


# ---- notebook 03: the scan, the classes, the choice of blocks, the plan -------------------------
def plot_sensitivity(scan: SensitivityScan, classes: Sequence[BlockClass], tau1: float, tau2: float) -> Image:
    """Left: s_l / PPL_TP per block, coloured by class, thresholds dashed (symlog: the first blocks are
    orders of magnitude above the rest). Right: the scan's running perplexity PPL(SPD on l..L-1)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, (left, right) = _figure(1, 2, figsize=(12, 3.6))
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
    _plain_log_ticks(right)
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
    fig, ax = _figure(figsize=(7, 3.2))
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
    _plain_log_ticks(ax)
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


# ---- notebook 04: B2B and HG on single blocks ----------------------------------------------------
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

    fig, axes = _figure(1, 3, figsize=(13, 3.8))
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
    axes[2].plot(list(mlp_perm), range(len(mlp_perm)), "c*", ms=14, label="chosen (Hungarian)")
    axes[2].set(xlabel="MLP shard m", ylabel="rank a (its head group)", xticks=range(len(scores)),
                yticks=range(len(scores)), title="mean ||MLP_m(Norm(X + Y_a))||")
    axes[2].legend(fontsize=7, loc="lower right")
    fig.colorbar(image, ax=axes[2], shrink=0.8)
    return as_image(fig)


def plot_loss_curves(runs: dict[str, DistillResult]) -> Image:
    """B2B training MSE per epoch (epoch 0: before training), one line per run, log scale."""
    fig, ax = _figure(figsize=(6.5, 3.4))
    for i, (label, r) in enumerate(runs.items()):
        ax.plot(range(len(r.loss_curve) + 1), [r.mse_before] + r.loss_curve, marker="o", ms=3, color=f"C{i}",
                label=label)
        ax.plot([len(r.loss_curve)], [r.mse_after], "x", color=f"C{i}", ms=9)
    ax.set(yscale="log", xlabel="epoch", ylabel="block output MSE vs TP")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="x: MSE after training, no grad", title_fontsize=7)
    return as_image(fig)


# ---- notebook 05: recorded latency, accuracy, the trade-off --------------------------------------
def recorded_rows(folder: Path = RESULTS / "h100") -> list[dict]:
    """Every measured row of results/h100/*.jsonl (never predictions)."""
    from .commcost import load_rows

    return [r for r in load_rows(str(p) for p in sorted(Path(folder).glob("*.jsonl"))) if not r.get("prediction")]


def live_gpu_bench(nproc: int, timeout_s: float = 900) -> list[dict]:
    """A small bench on this machine's GPUs (through spd_ref.launch): LLaMA2-7B-shaped blocks, 8 of them,
    batch 1, 512 cached tokens, SPD ratio 0, 0.5, 1 and the no-comm floor, compiled + CUDA graph."""
    from .commcost import load_rows
    from .launch import launch

    with tempfile.TemporaryDirectory() as tmp:  # this machine's rows stay out of results/
        out = Path(tmp) / "live.jsonl"
        done = launch(nproc, ["bench", "--shape", "llama2-7b", "--layers", "8", "--batch", "1", "--prompt-lens",
                              "none", "--ctx", "512", "--spd-ratios", "0,0.5,1", "--no-comm", "--repeats", "50",
                              "--tag", "notebook05-live", "--out", str(out)], timeout_s=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"live benchmark failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        return load_rows([str(out)])


def latency_saving(rows: list[dict], ratio: float, shape: str = "llama2-7b", tp: int = 4, p2p: bool = True,
                   batch: int = 1) -> float:
    """Measured decode saving 1 - ms(ratio) / ms(0) of one setting (latency_report.measured_table),
    linear between the measured ratios: every dropped sync saves about the same time (eff_floor ~ 1)."""
    for line in measured_table(rows):
        if (line["shape"], line["tp"], line["p2p"], line["batch"]) == (shape, tp, p2p, batch):
            pts = [(int(k[1:]) / 100, v) for k, v in line.items() if k[0] == "r" and k[1:].isdigit() and v]
            xs, ys = zip(*sorted(pts))
            return 1 - float(np.interp(ratio, xs, ys)) / line["r0"]
    raise ValueError(f"no measured decode of {shape} tp={tp} p2p={p2p} batch={batch} in the rows")


def frontier(latency_rows: list[dict], sweep_rows: list[dict], tp: int = 4, p2p: bool = True) -> list[dict]:
    """Per strategy and SPD ratio of the accuracy sweep at `tp`: the measured LLaMA2-7B decode saving at
    that ratio (TP `tp`, batch 1) beside SmolLM2's average accuracy drop and held-out word perplexity
    (relative to ratio 0; different models!)."""
    from .plots_accuracy import sweep_series
    from .sweep import average_accuracy

    avg = average_accuracy(sweep_rows)
    ppl = {(t, s, r): v for (t, s), xy in sweep_series(sweep_rows, "word_perplexity").items() for r, v in zip(*xy)}
    return [dict(strategy=s, ratio=r, latency_saving_7b=latency_saving(latency_rows, r, tp=tp, p2p=p2p),
                 accuracy=a, accuracy_drop_smollm2=avg[(t, s, 0.0)] - a, word_ppl=ppl.get((t, s, r)),
                 word_ppl_ratio=ppl[(t, s, r)] / ppl[(t, s, 0.0)] if (t, s, r) in ppl else None)
            for (t, s, r), a in sorted(avg.items()) if t == tp and (t, s, 0.0) in avg]


def accuracy_table(sweep_rows: list[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """(rows, print_table columns): average accuracy per TP degree and strategy, a column per SPD ratio."""
    from .sweep import average_accuracy

    table: dict[tuple, dict] = {}
    for (tp, s, r), a in sorted(average_accuracy(sweep_rows).items()):
        table.setdefault((tp, s), dict(tp=tp, strategy=s))[f"{r:.2f}"] = a
    ratios = sorted({k for line in table.values() for k in line if k not in ("tp", "strategy")})
    return list(table.values()), [("tp", ""), ("strategy", "")] + [(r, ".3f") for r in ratios]


def plot_frontier(points: list[dict]) -> Image:
    """Against the measured latency saving (LLaMA2-7B shape), a line per strategy: SmolLM2's average
    accuracy drop (left) and held-out word perplexity over that at ratio 0 (right, log)."""
    from .plots_accuracy import LABELS, MARKERS

    fig, axes = _figure(1, 2, figsize=(12, 4))
    for ax, key, scale, label in ((axes[0], "accuracy_drop_smollm2", 100, "average accuracy drop (points)"),
                                  (axes[1], "word_ppl_ratio", 1, "held-out word perplexity / at ratio 0")):
        for s in dict.fromkeys(p["strategy"] for p in points):
            mine = [p for p in points if p["strategy"] == s and p[key] is not None]
            ax.plot([100 * p["latency_saving_7b"] for p in mine], [scale * p[key] for p in mine],
                    marker=MARKERS.get(s, "."), label=LABELS.get(s, s))
        for p in (p for p in points if p["strategy"] == points[0]["strategy"] and p[key] is not None):
            ax.annotate(f"r={p['ratio']:.2f}", (100 * p["latency_saving_7b"], scale * p[key]), fontsize=7,
                        xytext=(3, 6), textcoords="offset points")
        ax.set(xlabel="measured decode saving, LLaMA2-7B shape, TP 4, 4 x H100 (%)", ylabel=f"SmolLM2: {label}")
        ax.grid(alpha=0.3)
    axes[0].axhline(1, ls="--", color="k", lw=0.8, label="1 point")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("latency and accuracy come from different models (see the text)", fontsize=9)
    return as_image(fig)


def operating_point(cost: DecodeCostModel, alpha_us: float, latency_rows: list[dict], predictions: list[dict],
                    sweep_rows: list[dict], tp: int, busbw_gbps: float, ratio: float) -> dict:
    """One (TP degree, bus bandwidth, SPD ratio) setting: the cost model's saving, the recorded decode
    saving of the nearest measured setting (P2P off below 100 GB/s; TP 8: the PREDICTION rows), and
    SmolLM2's accuracy drop at the nearest swept ratio (TP 4, full method "hg")."""
    from .sweep import average_accuracy

    model, p2p = cost.predict(tp, busbw_gbps, alpha_us, ratio), busbw_gbps >= 100
    out = dict(tp=tp, busbw_gbps=busbw_gbps, spd_ratio=ratio, model_saving=model["saving"], recorded_saving=None,
               recorded_source="-", acc_drop=None, acc_ratio=None)
    if tp in (2, 4):
        with contextlib.suppress(ValueError):
            out.update(recorded_saving=latency_saving(latency_rows, ratio, tp=tp, p2p=p2p),
                       recorded_source=f"measured TP {tp} P2P {'on' if p2p else 'off'}")
    pred = sorted((r["spd_ratio"], r["ms_median"]) for r in predictions if (r["shape"], r["batch"], r["tp"], r["p2p"])
                  == ("llama2-7b", 1, tp, p2p) and r.get("comm_model") == PRIMARY and not r.get("what_if_busbw_gbps"))
    if pred:
        out.update(recorded_saving=1 - float(np.interp(ratio, *zip(*pred))) / pred[0][1],
                   recorded_source=f"PREDICTION TP {tp} P2P {'on' if p2p else 'off'}")
    avg = {r: a for (t, s, r), a in average_accuracy(sweep_rows).items() if (t, s) == (4, "hg")}
    if avg:
        near = min(avg, key=lambda r: abs(r - ratio))
        out.update(acc_ratio=near, acc_drop=avg[0.0] - avg[near])
    return out


OPERATING_COLUMNS = [("tp", ""), ("busbw_gbps", ".0f"), ("spd_ratio", ".2f"), ("model_saving", ".1%"),
                     ("recorded_saving", ".1%"), ("recorded_source", ""), ("acc_ratio", ".2f"), ("acc_drop", ".1%")]


def explorer(point: Callable[..., dict]) -> interactive:
    """ipywidgets sliders (SPD ratio, TP degree, bus bandwidth) over `point(tp, busbw_gbps, ratio)`."""
    import ipywidgets as widgets

    from .commcost import print_table

    return widgets.interactive(
        lambda ratio, tp, busbw_gbps: print_table([point(tp=tp, busbw_gbps=busbw_gbps, ratio=ratio)],
                                                  OPERATING_COLUMNS),
        ratio=widgets.FloatSlider(value=0.5, min=0, max=1, step=0.05, description="SPD ratio"),
        tp=widgets.IntSlider(value=4, min=2, max=8, description="TP degree"),
        busbw_gbps=widgets.FloatLogSlider(value=300, base=10, min=0, max=3, step=0.001, description="bus GB/s"))


def plot_operating(point: Callable[..., dict]) -> Image:
    """Static twin of `explorer`: decode saving against SPD ratio at TP 2, 4, 8, model lines at 300 and
    25 GB/s, recorded markers at the measured ratios (TP 8, hollow: PREDICTION)."""
    fig, ax = _figure(figsize=(8, 4))
    ratios = np.linspace(0, 1, 21)
    for i, tp in enumerate((2, 4, 8)):
        for bw, ls, marker in ((300, "-", "o"), (25, ":", "s")):
            pts = [point(tp=tp, busbw_gbps=bw, ratio=r) for r in ratios]
            ax.plot(ratios, [100 * p["model_saving"] for p in pts], ls=ls, color=f"C{i}",
                    label=f"model TP {tp}, {bw} GB/s")
            rec = [(r, p) for r, p in zip(ratios, pts) if p["recorded_saving"] is not None][::5]  # 0, .25, .5, .75, 1
            if rec:
                ax.plot([r for r, _ in rec], [100 * p["recorded_saving"] for _, p in rec], marker, color=f"C{i}",
                        mfc="none" if tp == 8 else f"C{i}", label=rec[0][1]["recorded_source"])
    ax.set(xlabel="SPD ratio", ylabel="decode saving, LLaMA2-7B shape, batch 1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return as_image(fig)
