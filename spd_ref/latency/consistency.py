"""Are a decode group's numbers consistent with each other? The floor (no communication) runs the same
compute as every row that communicates, so it can be no slower than any of them; SPD on every block
removes half of the sync points, so it can be no slower than the baseline.

Within one group (same shape, TP degree, P2P setting, batch and cache length), bench measures the
floor first and the ratios in ascending order, and checks each row as it comes against the rows
before it: floor <= this row, and for SPD 100% also SPD 100% <= the baseline of the same all-reduce
kind, allowing the other row's p90 spread (a median inside the other row's p90 is noise, not a
contradiction). A row that breaks it gets `consistent: false` and a `consistency` note naming the
contradiction; a checked row that breaks nothing gets `consistent: true`. Efficiencies
(spd_ref.latency.commcost) are refused for a group with a flagged row.
"""
from __future__ import annotations

from typing import Sequence


def _slower(a: dict, b: dict) -> bool:
    """a is slower than b beyond b's spread: a's median above b's p90."""
    return a["ms_median"] > b["ms_p90"]


def check_row(row: dict, earlier: Sequence[dict]) -> dict:
    """`row` with `consistent` and `consistency` set against the group's earlier rows (unchanged when
    there is nothing to compare it with: the floor itself, or a row with no floor and no baseline)."""
    if row["no_comm"]:
        return row
    problems, compared = [], False
    floor = next((r for r in earlier if r["no_comm"]), None)
    if floor is not None:
        compared = True
        if _slower(floor, row):
            problems.append(f"floor {floor['ms_median']:.3f} ms is slower than this row "
                            f"({row['ms_median']:.3f}, p90 {row['ms_p90']:.3f})")
    base = next((r for r in earlier if not r["no_comm"] and r["spd_ratio"] == 0.0
                 and r["allreduce"] == row["allreduce"]), None)
    if row["spd_ratio"] == 1.0 and base is not None:
        compared = True
        if _slower(row, base):
            problems.append(f"SPD 100% is slower than its baseline {base['ms_median']:.3f} ms "
                            f"(p90 {base['ms_p90']:.3f})")
    if not compared:
        return row
    return dict(row, consistent=not problems, consistency="; ".join(problems) or None)


def consistent_group(rows: Sequence[dict]) -> bool:
    """False when any row of the group was flagged (its efficiencies are not to be trusted)."""
    return not any(r.get("consistent") is False for r in rows)
