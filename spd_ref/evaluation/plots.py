"""Figures of the accuracy sweep (spd_ref.evaluation.sweep): average accuracy and perplexity against SPD ratio."""
from __future__ import annotations

from pathlib import Path

MARKERS = {"random": "x", "zs": "o", "b2b": "s", "hg": "^"}
LABELS = {"random": "random order, zero-shot", "zs": "sensitivity order, zero-shot",
          "b2b": "+ B2B (sensitive)", "hg": "+ HG + B2B (extremely sensitive)"}


def sweep_series(rows: list[dict], metric: str) -> dict[tuple[int, str], tuple[list[float], list[float]]]:
    """(tp, strategy) -> (ratios, values): accuracies averaged over tasks, or a perplexity metric."""
    points: dict[tuple, dict[float, list[float]]] = {}
    for r in rows:
        if r.get("metric") == metric and "strategy" in r:
            points.setdefault((r["tp"], r["strategy"]), {}).setdefault(r["spd_ratio"], []).append(r["value"])
    return {k: (sorted(v), [sum(v[x]) / len(v[x]) for x in sorted(v)]) for k, v in points.items()}


def plot_sweep(rows: list[dict], path: str | Path, ppl_metric: str = "word_perplexity") -> Path:
    import matplotlib.pyplot as plt

    tps = sorted({r["tp"] for r in rows if "strategy" in r})
    fig, axes = plt.subplots(2, len(tps), figsize=(5.5 * len(tps), 7), squeeze=False, sharex=True)
    for col, tp in enumerate(tps):
        for row, (metric, label) in enumerate([("acc", "average accuracy (offline suite)"),
                                               (ppl_metric, f"held-out {ppl_metric}")]):
            ax = axes[row][col]
            for (t, strategy), (x, y) in sorted(sweep_series(rows, metric).items()):
                if t == tp:
                    ax.plot(x, y, marker=MARKERS.get(strategy, "."), label=LABELS.get(strategy, strategy))
            ax.set_title(f"SmolLM2-135M, TP {tp}" if row == 0 else "")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if metric != "acc":
                ax.set_yscale("log")
                ax.set_xlabel("SPD ratio (fraction of blocks without the attention all-reduce)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
