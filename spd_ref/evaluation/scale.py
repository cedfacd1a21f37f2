"""The scale study (issue 13): how SPD's tolerance changes with model size, from recorded sweep rows.

    python -m spd_ref.evaluation.scale results/scale     # prints the summary, writes tolerance.png
    python -m spd_ref.evaluation.scale --resolution      # how far more items could narrow each interval

Reads every results/scale/MODEL/sweep_tpN.jsonl (spd_ref.evaluation.sweep) and gives, per model and TP
degree: the share of in-sensitive blocks (scan score <= tau1), the largest SPD ratio whose paired
95% interval of the average-accuracy drop stays within 1 point, and the drop at each ratio; and the
figure "SPD tolerance against model size" beside the paper's statements (METHOD.md s.3).
"""
from __future__ import annotations

import sys
from pathlib import Path

from spd_ref.calibration.sensitivity import BlockClass
from spd_ref.evaluation.statistics import item_scores, projected_half_width
from spd_ref.evaluation.sweep_rows import drops, largest_ratio_within, load_rows, scored_settings

# The paper's statements on in-sensitive blocks (METHOD.md s.3), drawn beside our measurements.
PAPER_INSENSITIVE = {"LLaMA2-70B": (70e9, 0.75), "OPT-66B": (66e9, 0.84)}
FIGURE_RATIO = 0.5  # [ours] the SPD ratio whose accuracy drop the figure shows


def load_study(folder: str | Path) -> dict[str, list[dict]]:
    """{model: rows} for every model folder under `folder` that holds sweep rows."""
    out = {}
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        rows = load_rows(sub)
        if rows:
            out[sub.name] = rows
    return out


STRATEGY_ORDER = ("zs", "b2b", "hg", "random")  # the order of the table's lines


def summary(study: dict[str, list[dict]], strategies: tuple[str, ...] = ()) -> list[dict]:
    """One line per (model, TP, strategy), smallest model first: params, blocks, in-sensitive share,
    largest ratio within 1 point (interval-based; None when ratio 0 is all that was scored), ratios
    scored, the drop at each. `strategies`: those to show (default: every one with rows)."""
    lines = []
    for model, rows in study.items():
        sens = [r for r in rows if r.get("kind") == "sensitivity"]
        drop, best = drops(rows), largest_ratio_within(rows)
        for tp in sorted({r["tp"] for r in sens}):
            blocks = [r for r in sens if r["tp"] == tp]
            present = sorted({k[1] for k in drop if k[0] == tp}, key=lambda x: STRATEGY_ORDER.index(x))
            for strategy in strategies or present:
                scored = sorted(k[2] for k in drop if k[:2] == (tp, strategy))
                lines.append({"model": model, "params": blocks[0].get("params"), "tp": tp, "strategy": strategy,
                              "blocks": len(blocks), "insensitive": sum(r["class"] == BlockClass.INSENSITIVE.value
                                                                        for r in blocks) / len(blocks),
                              "largest_within_1pt": best.get((tp, strategy)) if len(scored) > 1 else None,
                              "ratios_scored": scored, "drops": {x: drop[(tp, strategy, x)] for x in scored},
                              "score_s": sorted({r["score_s"] for r in rows if r.get("tp") == tp
                                                 and r.get("strategy") == strategy and "score_s" in r})})
    order = lambda s: (s["params"] or 0, s["tp"], STRATEGY_ORDER.index(s["strategy"]))
    return sorted(lines, key=order)  # smallest model first


def markdown(lines: list[dict]) -> str:
    out = ["| model | params | TP | strategy | in-sensitive blocks | largest ratio, 95% CI of drop <= 1 pt | "
           "drop at each ratio, points [95% CI] |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in lines:
        drops_text = "; ".join(f"{x:.2f}: {100 * d.drop:.1f} [{100 * d.low:.1f}, {100 * d.high:.1f}]"
                               for x, d in s["drops"].items() if x > 0) or "-"
        best = "-" if s["largest_within_1pt"] is None else f"{s['largest_within_1pt']:.2f}"
        params = f"{s['params'] / 1e6:.0f} M" if s["params"] else "?"
        out.append(f"| {s['model']} | {params} | {s['tp']} | {s['strategy']} | "
                   f"{s['insensitive']:.0%} of {s['blocks']} | {best} | {drops_text} |")
    return "\n".join(out)


def plot_tolerance(lines: list[dict], path: str | Path, ratio: float = FIGURE_RATIO) -> Path:
    """Left: in-sensitive share against parameters (log), with the paper's statements. Right: the
    paired accuracy drop of zero-shot SPD at ratio `ratio` per model and TP, bars with their 95% intervals."""
    import matplotlib.pyplot as plt

    lines = [s for s in lines if s["strategy"] == "zs"]

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    tps = sorted({s["tp"] for s in lines})
    for tp in tps:
        pts = sorted((s["params"], s["insensitive"]) for s in lines if s["tp"] == tp and s["params"])
        if pts:
            left.plot(*zip(*[(p, 100 * v) for p, v in pts]), marker="o", label=f"measured, TP {tp}")
    for name, (params, share) in PAPER_INSENSITIVE.items():
        left.scatter([params], [100 * share], marker="*", s=120, color="k")
        left.annotate(f"{name} (paper)", (params, 100 * share), xytext=(-70, -14), textcoords="offset points",
                      fontsize=8)
    left.set(xscale="log", ylim=(0, 100), xlabel="parameters", ylabel="in-sensitive blocks (%)",
             title="Blocks SPD can drop without recovery (scan, tau1)")
    left.legend(fontsize=8)
    models = list(dict.fromkeys(s["model"] for s in lines))
    width = 0.8 / max(len(tps), 1)
    for i, tp in enumerate(tps):
        xs, ys, err = [], [], [[], []]
        for j, model in enumerate(models):
            d = next((s["drops"].get(ratio) for s in lines if (s["model"], s["tp"]) == (model, tp)), None)
            if d is not None:
                xs.append(j + (i - (len(tps) - 1) / 2) * width)
                ys.append(100 * d.drop)
                err[0].append(100 * (d.drop - d.low))
                err[1].append(100 * (d.high - d.drop))
        right.bar(xs, ys, width=width, yerr=err, capsize=3, label=f"TP {tp}")
    right.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="1 point")
    right.set_xticks(range(len(models)), models)
    right.set(ylabel="average accuracy drop, points", title=f"Zero-shot SPD on {ratio:.0%} of blocks (paired 95% CI)")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle("SPD tolerance against model size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def main(argv: list[str]) -> int:
    from spd_ref.__main__ import CommandParser

    p = CommandParser(prog="python -m spd_ref.evaluation.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", default="results/scale", type=_study_folder,
                   help="the study folder: one subfolder of sweep rows per model (default results/scale)")
    p.add_argument("--resolution", action="store_true",
                   help="print how far more items could narrow each interval, instead of the summary")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    if args.resolution:
        from spd_ref.evaluation.tasks import material

        print(resolution(load_study(folder), material()))
        return 0
    lines = summary(load_study(folder))
    print(markdown(lines))
    print(f"\nfigure: {plot_tolerance(lines, folder / 'tolerance.png')}")
    return 0


def resolution(study: dict[str, list[dict]], material: dict[str, int]) -> str:
    """Markdown: per model, TP, strategy and ratio, the paired interval's half-width now and with every task
    at all of its `material` (statistics.projected_half_width: the items added behaving like those scored)."""
    lines = ["| model | TP | strategy | SPD ratio | drop, points | half-width now | with all the material |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for model, rows in study.items():
        drop = drops(rows)
        for (tp, strategy, ratio), after in sorted(scored_settings(rows).items()):
            base = [r for r in rows if (r.get("tp"), r.get("strategy"), r.get("spd_ratio")) == (tp, strategy, 0.0)]
            before, now = item_scores(base), item_scores(after)
            if not before:
                continue
            d = drop[(tp, strategy, ratio)]
            wide = projected_half_width(before, now, material)
            lines.append(f"| {model} | {tp} | {strategy} | {ratio:.2f} | {100 * d.drop:.1f} | "
                         f"{100 * (d.high - d.low) / 2:.2f} | {100 * wide:.2f} |")
    return "\n".join(lines)


def _study_folder(text: str) -> str:
    import argparse

    if not Path(text).is_dir() or not load_study(text):
        raise argparse.ArgumentTypeError(f"{text!r} holds no model folder with sweep rows. Fix: give the folder "
                                         "that `bash results/scale/run.sh` writes (results/scale)")
    return text


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
