"""Paired accuracy differences with bootstrap confidence intervals.

Every accuracy comparison here is paired: the same items are scored before (the TP model) and after
(an SPD variant), and lm-eval's per-item scores (`items` in the rows, spd_ref.evaluation.evaluate)
are compared item by item. Most items get the same score both times, so a paired interval is far
narrower than two independent binomial errors would suggest, and it is the honest one.

The headline number is the drop of the average accuracy over tasks (each task weighs the same, as
in the paper's tables): drop = mean_t(acc_t before) - mean_t(acc_t after), in accuracy units (0.01
is one point). Its 95% interval comes from a paired bootstrap stratified by task: resample each
task's items with replacement (the same indices before and after), recompute the drop, take the
2.5% and 97.5% quantiles.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Mapping, Sequence

import numpy as np

ITERS = 2000  # [ours] bootstrap resamples: the quantiles move by well under 0.1 point beyond this
LEVEL = 0.95


@dataclass(frozen=True)
class Drop:
    """A paired accuracy drop (before - after; positive = SPD lost accuracy) and its interval."""

    drop: float
    low: float
    high: float
    n_items: int

    def within(self, points: float = 1.0) -> bool:
        """True when the whole interval lies at or below `points` of drop: we are 95% sure that
        the loss is at most that (a drop above it cannot be ruled out otherwise)."""
        return self.high <= points / 100

    def as_row(self) -> dict:
        return {"drop": self.drop, "drop_ci95": [self.low, self.high], "drop_n_items": self.n_items}


def item_scores(rows: Sequence[dict], metric: str = "acc") -> dict[str, np.ndarray]:
    """{task: per-item scores} from evaluation rows that carry `items` (one row per task)."""
    return {r["task"]: np.asarray(r["items"], dtype=float) for r in rows
            if r.get("metric") == metric and r.get("items") is not None}


def paired_drop(before: Mapping[str, Sequence[float]], after: Mapping[str, Sequence[float]],
                iters: int = ITERS, level: float = LEVEL, seed: int = 0) -> Drop:
    """The drop of the task-averaged score from `before` to `after`, with a paired, task-stratified
    bootstrap interval. Both map task -> per-item scores of the same items in the same order."""
    if set(before) != set(after) or not before:
        raise ValueError(f"before and after must score the same tasks (got {sorted(before)} and {sorted(after)})")
    rng = np.random.default_rng(seed)
    point, boot = 0.0, np.zeros(iters)
    for task in sorted(before):
        if len(before[task]) != len(after[task]) or not len(before[task]):
            raise ValueError(f"task {task!r}: before has {len(before[task])} items, after {len(after[task])}; "
                             "a paired comparison needs the same items")
        diff = np.asarray(before[task], dtype=float) - np.asarray(after[task], dtype=float)
        point += diff.mean()
        boot += diff[rng.integers(0, len(diff), size=(iters, len(diff)))].mean(axis=1)
    tasks = len(before)
    low, high = np.quantile(boot / tasks, [(1 - level) / 2, (1 + level) / 2])
    return Drop(float(point / tasks), float(low), float(high), sum(len(v) for v in before.values()))


def rows_drop(before_rows: Sequence[dict], after_rows: Sequence[dict], metric: str = "acc", **kw) -> Drop:
    """paired_drop of two evaluations' rows (tasks that carry per-item scores)."""
    return paired_drop(item_scores(before_rows, metric), item_scores(after_rows, metric), **kw)


def format_drop(d: Drop) -> str:
    """'1.2 [0.4, 2.0] points' (positive = accuracy lost)."""
    return f"{100 * d.drop:.1f} [{100 * d.low:.1f}, {100 * d.high:.1f}] points"


def projected_half_width(before: Mapping[str, Sequence[float]], after: Mapping[str, Sequence[float]],
                         sizes: Mapping[str, int], level: float = LEVEL) -> float:
    """The half-width the paired interval of the task-averaged drop would have with sizes[t] items of
    each task t, if the items added behaved like those scored (each task's per-item differences keep
    their variance): z * sqrt(sum_t var_t / n_t) / tasks, the normal approximation of paired_drop's
    bootstrap. How far more items can narrow an interval: a task whose material is used up caps it."""
    if set(before) != set(after) or set(before) - set(sizes):
        raise ValueError(f"sizes must name every task scored ({sorted(before)}); got {sorted(sizes)}")
    variance = sum(np.var(np.asarray(before[t], float) - np.asarray(after[t], float)) / sizes[t] for t in before)
    return NormalDist().inv_cdf((1 + level) / 2) * float(np.sqrt(variance)) / len(before)
