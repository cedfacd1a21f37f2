"""The compute floor of decode against the TP degree, floor(N) = a + b/N, fitted to measured no-comm rows.

**[ours]** a: what does not shard (per-block overheads, the replicated embedding and head), b: what does
(weights, KV reads); fitted by relative least squares with a, b >= 0 per shape and batch (P2P on/off
floors averaged; rows measured before the fusion commit moved to the current code). A shape measured at
one TP degree only: a = L x the median per-block a of the fitted shapes. spd_ref.latency.predict builds on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import Iterable, Sequence

import numpy as np

from spd_ref.latency.alphabeta import nonneg_weighted_lstsq
from spd_ref.latency.commcost import decode_groups
from spd_ref.latency.report import code_version, current_rows, floor_of


@dataclass(frozen=True)
class FloorFit:
    """floor(N) = a_ms + b_ms / N; `tps`: the measured TP degrees behind it."""

    a_ms: float
    b_ms: float
    tps: tuple = ()

    def at(self, n: int) -> float:
        return self.a_ms + self.b_ms / n


def fit_floor(ns: Sequence[int], ms: Sequence[float]) -> FloorFit:
    """a, b >= 0 of floor(N) = a + b/N by relative least squares; needs 2 or more TP degrees."""
    n, y = np.asarray(ns, float), np.asarray(ms, float)
    if len(np.unique(n)) < 2:
        raise ValueError(f"need floors at 2 or more TP degrees to fit a + b/N, got TP {sorted(set(ns))}")
    a, b = nonneg_weighted_lstsq(np.stack([np.ones_like(n), 1 / n], 1), y, 1 / y)
    return FloorFit(float(a), float(b), tuple(sorted(set(int(v) for v in ns))))


def measured_floors(rows: Iterable[dict], delta_ms_per_layer: float) -> dict[tuple, dict]:
    """{(shape, batch): {layers, hidden, ctx, points: {tp: floor ms in current-code terms}}} from the
    current spd_ref decode rows (pre-fusion floors minus delta x layers; P2P on/off averaged)."""
    acc: dict[tuple, dict] = {}
    for key, g in decode_groups(current_rows(rows)).items():
        floor = floor_of(g)
        if key[0] != "spd_ref" or floor is None:
            continue
        shift = delta_ms_per_layer * floor["layers"] if code_version(floor) == "pre-fusion" else 0.0
        d = acc.setdefault((floor["shape"], floor["batch"]), dict(layers=floor["layers"], hidden=floor["hidden"],
                                                                    ctx=floor["ctx"], points={}))
        d["points"].setdefault(floor["tp"], []).append(floor["ms_median"] - shift)
    for d in acc.values():
        d["points"] = {tp: float(np.mean(v)) for tp, v in d["points"].items()}
    return acc


def floor_fits(floors: dict[tuple, dict]) -> dict[tuple, FloorFit]:
    """a + b/N per (shape, batch); one-TP shapes split with the per-block a of the fitted shapes."""
    fits = {k: fit_floor(list(d["points"]), list(d["points"].values()))
            for k, d in floors.items() if len(d["points"]) >= 2}
    for (shape, batch), d in floors.items():
        if len(d["points"]) != 1:
            continue
        per_block = [f.a_ms / floors[k]["layers"] for k, f in fits.items() if k[1] == batch]
        if not per_block:
            continue
        (n, ms), = d["points"].items()
        a = min(median(per_block) * d["layers"], ms)
        fits[(shape, batch)] = FloorFit(a, n * (ms - a), (n,))
    return fits
