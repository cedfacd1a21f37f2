"""Reading a sweep's rows (spd_ref.evaluation.sweep): average accuracy, the paired drop against ratio 0,
the largest ratio within 1 point by its interval, what each recovery step gains, and the Markdown report."""
from __future__ import annotations

import json
from pathlib import Path

from spd_ref.evaluation.statistics import Drop, format_drop, rows_drop


def load_rows(folder: str | Path) -> list[dict]:
    """Every row of every sweep_tp*.jsonl in `folder`."""
    return [json.loads(line) for path in sorted(Path(folder).glob("sweep_tp*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


def average_accuracy(rows: list[dict]) -> dict[tuple, float]:
    """Mean accuracy over the accuracy tasks, per (tp, strategy, ratio)."""
    acc: dict[tuple, list[float]] = {}
    for r in rows:
        if r.get("metric") == "acc":
            acc.setdefault((r["tp"], r["strategy"], r["spd_ratio"]), []).append(r["value"])
    return {k: sum(v) / len(v) for k, v in acc.items()}


def drops(rows: list[dict]) -> dict[tuple, Drop]:
    """The paired drop of average accuracy against ratio 0, per (tp, strategy, ratio)."""
    return {(r["tp"], r["strategy"], r["spd_ratio"]): Drop(r["drop"], *r["drop_ci95"], r["drop_n_items"])
            for r in rows if r.get("metric") == "acc" and "drop_ci95" in r}


def largest_ratio_within(rows: list[dict], points: float = 1.0) -> dict[tuple, float]:
    """Per (tp, strategy): the largest ratio whose paired 95% interval of the average-accuracy drop lies
    at or below `points` (Drop.within): the interval, not the point estimate."""
    best: dict[tuple, float] = {}
    for (tp, strategy, ratio), drop in sorted(drops(rows).items(), key=lambda kv: kv[0][2]):
        if drop.within(points):
            best[(tp, strategy)] = ratio
    return best


def report(rows: list[dict], ppl_metric: str = "word_perplexity") -> str:
    """Markdown: average accuracy, its paired drop with the 95% interval and held-out perplexity per
    (tp, strategy, ratio); per (tp, strategy) the largest ratio whose interval stays within 1 point."""
    avg, drop = average_accuracy(rows), drops(rows)
    ppl = {(r["tp"], r["strategy"], r["spd_ratio"]): r["value"] for r in rows
           if r.get("metric") == ppl_metric and "strategy" in r}
    items = {k: d.n_items for k, d in drop.items()}
    lines = ["| TP | strategy | SPD ratio | avg accuracy | drop, points [95% CI] | items | held-out word ppl |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for key in sorted(avg):
        d = format_drop(drop[key]).removesuffix(" points") if key in drop else "-"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]:.2f} | {avg[key]:.3f} | {d} | {items.get(key, '-')} | "
                     f"{ppl.get(key, float('nan')):.1f} |")
    lines += ["", "| TP | strategy | largest ratio whose 95% CI of the drop stays <= 1 point |", "| --- | --- | --- |"]
    best = largest_ratio_within(rows)
    for tp, strategy in sorted({(k[0], k[1]) for k in drop}):
        lines.append(f"| {tp} | {strategy} | {best.get((tp, strategy), 0.0):.2f} |")
    gains = recovery_gains(rows)
    if gains:
        lines += ["", "| TP | SPD ratio | step | accuracy gained, points [95% CI], paired |", "| --- | --- | --- | --- |"]
        lines += [f"| {tp} | {ratio:.2f} | {step} | {100 * g.drop:.1f} [{100 * g.low:.1f}, {100 * g.high:.1f}] |"
                  for (tp, ratio, step), g in sorted(gains.items())]
    return "\n".join(lines)


def scored_settings(rows: list[dict]) -> dict[tuple, list[dict]]:
    """{(tp, strategy, ratio): the rows with per-item scores} for the SPD settings (ratio > 0)."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("items") is not None and r.get("spd_ratio"):
            out.setdefault((r["tp"], r["strategy"], r["spd_ratio"]), []).append(r)
    return out


RECOVERY_STEPS = (("zs", "b2b"), ("b2b", "hg"))  # what B2B adds to zero-shot; what HG adds to B2B


def recovery_gains(rows: list[dict]) -> dict[tuple, Drop]:
    """Per (tp, ratio, "b2b - zs" / "hg - b2b"): the paired accuracy gain of a recovery step over the
    strategy before it, on the same items (a Drop whose values are gains: positive = the step helped).
    Only where both settings differ in what they ran (at low ratios every block is in-sensitive and
    all strategies are the same setting)."""
    scored = scored_settings(rows)
    out = {}
    for (tp, strategy, ratio), after in scored.items():
        for before_name, after_name in RECOVERY_STEPS:
            before = scored.get((tp, before_name, ratio))
            if strategy == after_name and before and after[0]["recovered"] != before[0]["recovered"]:
                d = rows_drop(after, before)  # before minus after, reversed: the gain of the step
                out[(tp, ratio, f"{after_name} - {before_name}")] = d
    return out


def sweep_gains(after: list[dict], before: list[dict]) -> dict[tuple, Drop]:
    """Per (tp, strategy, ratio) scored in both sweeps (ratio > 0): the paired accuracy gain of `after`
    over `before` on the same items, e.g. recovery trained on 32 windows against 8 (positive = `after`
    is better). Both sweeps must have scored the same items (the same tasks and limit)."""
    new, old = scored_settings(after), scored_settings(before)
    return {key: rows_drop(new[key], old[key]) for key in sorted(set(new) & set(old))}
