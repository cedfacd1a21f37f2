"""Figures of the accuracy sweep (spd_ref.evaluation.sweep): average accuracy (with the paired 95%
interval of its drop) and perplexity against SPD ratio."""
from __future__ import annotations

from pathlib import Path

MARKERS = {"random": "x", "zs": "o", "b2b": "s", "hg": "^"}
LABELS = {"random": "random order, zero-shot", "zs": "sensitivity order, zero-shot",
          "b2b": "+ B2B (sensitive)", "hg": "+ HG + B2B (extremely sensitive)"}


def sweep_series(rows: list[dict], metric: str) -> dict[tuple[int, str], tuple[list[float], list[float]]]:
    """(tp, strategy) -> (ratios, values): a metric averaged over the tasks that report it."""
    points: dict[tuple, dict[float, list[float]]] = {}
    for r in rows:
        if r.get("metric") == metric and "strategy" in r:
            points.setdefault((r["tp"], r["strategy"]), {}).setdefault(r["spd_ratio"], []).append(r["value"])
    return {k: (sorted(v), [sum(v[x]) / len(v[x]) for x in sorted(v)]) for k, v in points.items()}


def accuracy_bars(rows: list[dict]) -> dict[tuple[int, str, float], tuple[float, float]]:
    """(tp, strategy, ratio) -> (below, above): the paired 95% interval of the drop against ratio 0
    (drop_ci95), as error bars around the average accuracy (accuracy = base - drop, so the bars are
    base - high .. base - low). Rows without per-item scores (older records) get none."""
    return {(r["tp"], r["strategy"], r["spd_ratio"]): (r["drop_ci95"][1] - r["drop"], r["drop"] - r["drop_ci95"][0])
            for r in rows if r.get("metric") == "acc" and "drop_ci95" in r}


def plot_sweep(rows: list[dict], path: str | Path, ppl_metric: str = "word_perplexity", title: str = "") -> Path:
    import matplotlib.pyplot as plt

    tps = sorted({r["tp"] for r in rows if "strategy" in r})
    fig, axes = plt.subplots(2, len(tps), figsize=(5.5 * len(tps), 7), squeeze=False, sharex=True)
    for col, tp in enumerate(tps):
        top, bottom = axes[0][col], axes[1][col]
        bars = accuracy_bars(rows)
        for (t, strategy), (x, y) in sorted(sweep_series(rows, "acc").items()):
            if t == tp:
                err = [bars.get((t, strategy, r), (0.0, 0.0)) for r in x]
                top.errorbar(x, y, yerr=list(zip(*err)), marker=MARKERS.get(strategy, "."), capsize=3,
                             label=LABELS.get(strategy, strategy))
        top.set(title=f"{title}, TP {tp}".lstrip(", "),
                ylabel="average accuracy (bars: paired 95% CI of the drop)")
        for (t, strategy), (x, y) in sorted(sweep_series(rows, ppl_metric).items()):
            if t == tp:
                bottom.plot(x, y, marker=MARKERS.get(strategy, "."), label=LABELS.get(strategy, strategy))
        bottom.set(yscale="log", ylabel=f"held-out {ppl_metric}",
                   xlabel="SPD ratio (fraction of blocks without the attention all-reduce)")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
