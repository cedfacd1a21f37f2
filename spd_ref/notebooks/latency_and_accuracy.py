"""Notebook 05 (latency and accuracy): recorded and live latency rows, the measured saving beside the
accuracy sweep, the trade-off frontier, and the operating-point table, sliders and figure (DESIGN.md,
Notebooks).
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from spd_ref.latency.report import measured_table
from spd_ref.notebooks.figures import as_image, new_figure
from spd_ref.latency.predict import PRIMARY
from spd_ref.notebooks.communication_cost import DecodeCostModel

if TYPE_CHECKING:
    from IPython.display import Image
    from ipywidgets import interactive

RESULTS = Path(__file__).resolve().parents[2] / "results"


def recorded_rows(folder: Path = RESULTS / "h100") -> list[dict]:
    """Every measured bench row of folder/*.jsonl (never predictions, nor the minimal loop's own rows)."""
    from spd_ref.latency.commcost import load_rows

    return [r for r in load_rows(str(p) for p in sorted(Path(folder).glob("*.jsonl")))
            if not r.get("prediction") and r.get("kind") in ("decode", "prefill", "allreduce")]


def live_gpu_bench(nproc: int, timeout_s: float = 900) -> list[dict]:
    """A small bench on this machine's GPUs (through spd_ref.launch): LLaMA2-7B-shaped blocks, 8 of them,
    batch 1, 512 cached tokens, SPD ratio 0, 0.5, 1 and the no-comm floor, compiled + CUDA graph."""
    from spd_ref.latency.commcost import load_rows
    from spd_ref.launch import launch

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
    from spd_ref.evaluation.plots import sweep_series
    from spd_ref.evaluation.sweep_rows import average_accuracy

    avg = average_accuracy(sweep_rows)
    ppl = {(t, s, r): v for (t, s), xy in sweep_series(sweep_rows, "word_perplexity").items() for r, v in zip(*xy)}
    return [dict(strategy=s, ratio=r, latency_saving_7b=latency_saving(latency_rows, r, tp=tp, p2p=p2p),
                 accuracy=a, accuracy_drop_smollm2=avg[(t, s, 0.0)] - a, word_ppl=ppl.get((t, s, r)),
                 word_ppl_ratio=ppl[(t, s, r)] / ppl[(t, s, 0.0)] if (t, s, r) in ppl else None)
            for (t, s, r), a in sorted(avg.items()) if t == tp and (t, s, 0.0) in avg]


def accuracy_table(sweep_rows: list[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """(rows, print_table columns): average accuracy per TP degree and strategy, a column per SPD ratio."""
    from spd_ref.evaluation.sweep_rows import average_accuracy

    table: dict[tuple, dict] = {}
    for (tp, s, r), a in sorted(average_accuracy(sweep_rows).items()):
        table.setdefault((tp, s), dict(tp=tp, strategy=s))[f"{r:.2f}"] = a
    ratios = sorted({k for line in table.values() for k in line if k not in ("tp", "strategy")})
    return list(table.values()), [("tp", ""), ("strategy", "")] + [(r, ".3f") for r in ratios]


def plot_frontier(points: list[dict]) -> Image:
    """Against the measured latency saving (LLaMA2-7B shape), a line per strategy: SmolLM2's average
    accuracy drop (left) and held-out word perplexity over that at ratio 0 (right, log)."""
    from spd_ref.evaluation.plots import LABELS, MARKERS

    fig, axes = new_figure(1, 2, figsize=(12, 4))
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
    from spd_ref.evaluation.sweep_rows import average_accuracy

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

    from spd_ref.latency.commcost import print_table

    return widgets.interactive(
        lambda ratio, tp, busbw_gbps: print_table([point(tp=tp, busbw_gbps=busbw_gbps, ratio=ratio)],
                                                  OPERATING_COLUMNS),
        ratio=widgets.FloatSlider(value=0.5, min=0, max=1, step=0.05, description="SPD ratio"),
        tp=widgets.IntSlider(value=4, min=2, max=8, description="TP degree"),
        busbw_gbps=widgets.FloatLogSlider(value=300, base=10, min=0, max=3, step=0.001, description="bus GB/s"))


def plot_operating(point: Callable[..., dict]) -> Image:
    """Static twin of `explorer`: decode saving against SPD ratio at TP 2, 4, 8, model lines at 300 and
    25 GB/s, recorded markers at the measured ratios (TP 8, hollow: PREDICTION)."""
    fig, ax = new_figure(figsize=(8, 4))
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
