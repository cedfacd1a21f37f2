"""The latency-bandwidth model of an all-reduce, and its fits to measured all-reduce times.

Model (the textbook latency-bandwidth model of a collective):

    t(bytes) = alpha + beta * bytes                                      one fit per (tp, p2p)

fitted by least squares to the all-reduce microbenchmark (`bench --ar-bench`). **[ours]** The fit
minimizes the relative error (each point weighted by 1/t): message sizes span four orders of
magnitude, and plain least squares would let the largest messages decide alpha, while decode syncs
are the smallest messages. alpha and beta are kept non-negative. `busbw_gbps` reports beta as the bus
bandwidth nccl-tests would show: 2(N-1)/N * bytes / time.

To go beyond the measured TP degrees, **[ours]** a ring model shared by all N of one interconnect:

    t(N, bytes) = 2(N-1) * alpha_step + 2(N-1)/N * bytes / busbw

(a ring all-reduce takes 2(N-1) steps, each moving bytes/N over one link). It extrapolates to N = 8;
NCCL picks other algorithms (trees, LL protocols) for small messages, so treat it as a rough guide,
and compare its residuals on the measured N (spd_ref.latency.commcost prints them) before trusting it.
`fit_ring_overhead` adds a fixed cost per call, t = c0 + ring (**[ours]**, used by spd_ref.latency.predict).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

BF16_BYTES = 2


@dataclass(frozen=True)
class AlphaBeta:
    """t(bytes) = alpha_ms + beta_ms_per_byte * bytes, for `tp` ranks (0 = any, the ring model)."""

    alpha_ms: float
    beta_ms_per_byte: float
    tp: int
    p2p: Optional[bool] = None
    points: int = 0

    def time_ms(self, nbytes: float) -> float:
        return self.alpha_ms + self.beta_ms_per_byte * nbytes

    @property
    def busbw_gbps(self) -> float:
        """The bus bandwidth implied by beta (GB/s, as nccl-tests reports it)."""
        if self.beta_ms_per_byte <= 0 or self.tp < 2:
            return math.inf
        return 2 * (self.tp - 1) / self.tp / self.beta_ms_per_byte / 1e6

    def with_busbw(self, busbw_gbps: float) -> "AlphaBeta":
        """The same latency over another interconnect of bus bandwidth `busbw_gbps` (what-if)."""
        beta = 2 * (self.tp - 1) / self.tp / (busbw_gbps * 1e6)
        return AlphaBeta(self.alpha_ms, beta, self.tp, self.p2p, 0)


def nonneg_weighted_lstsq(design: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """argmin ||W (A x - y)|| with x >= 0 (few columns: try every active set, keep the best)."""
    a, b = design * weights[:, None], y * weights
    n = design.shape[1]
    best, best_err = np.zeros(n), float(np.sum(b ** 2))
    for mask in range(1, 1 << n):
        cols = [j for j in range(n) if mask >> j & 1]
        sol, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
        if (sol < 0).any():
            continue
        x = np.zeros(n)
        x[cols] = sol
        err = float(np.sum((a @ x - b) ** 2))
        if err < best_err:
            best, best_err = x, err
    return best


def fit_alpha_beta(nbytes: Sequence[float], ms: Sequence[float], tp: int = 0,
                   p2p: Optional[bool] = None, relative: bool = True) -> AlphaBeta:
    """Least-squares alpha and beta (>= 0) for t = alpha + beta * bytes; relative error by default."""
    x, y = np.asarray(nbytes, float), np.asarray(ms, float)
    if len(x) < 2 or len(np.unique(x)) < 2:
        raise ValueError(f"need all-reduce times at 2 or more message sizes to fit alpha and beta, got "
                         f"{len(np.unique(x))}. Fix: run `bench --ar-bench` (it measures 14 sizes).")
    w = 1 / y if relative else np.ones_like(y)
    alpha, beta = nonneg_weighted_lstsq(np.stack([np.ones_like(x), x], 1), y, w)
    return AlphaBeta(float(alpha), float(beta), tp, p2p, len(x))


def fit_ring(points: Iterable[tuple[int, float, float]], p2p: Optional[bool] = None) -> tuple[float, float]:
    """[ours] (alpha_step_ms, busbw_gbps) of t = 2(N-1) a + 2(N-1)/N bytes / busbw over (N, bytes, ms)."""
    pts = np.asarray(list(points), float)
    if len(pts) < 2:
        raise ValueError("need 2 or more all-reduce measurements to fit the ring model")
    n, b, t = pts[:, 0], pts[:, 1], pts[:, 2]
    design = np.stack([2 * (n - 1), 2 * (n - 1) / n * b], 1)
    step, inv_bw = nonneg_weighted_lstsq(design, t, 1 / t)
    return float(step), (1 / inv_bw / 1e6 if inv_bw > 0 else math.inf)


def fit_ring_overhead(points: Iterable[tuple[int, float, float]]) -> tuple[float, float, float]:
    """[ours] (overhead_ms, alpha_step_ms, busbw_gbps) of t = c0 + 2(N-1) a + 2(N-1)/N bytes / busbw:
    the ring model plus a fixed cost per call that does not grow with N (launch, synchronization;
    NCCL's small-message latency grows far less than 2(N-1)-fold). Needs 2 or more TP degrees."""
    pts = np.asarray(list(points), float)
    if len(pts) == 0 or len(np.unique(pts[:, 0])) < 2:
        raise ValueError("need all-reduce measurements at 2 or more TP degrees to fit the ring + overhead model")
    n, b, t = pts[:, 0], pts[:, 1], pts[:, 2]
    design = np.stack([np.ones_like(n), 2 * (n - 1), 2 * (n - 1) / n * b], 1)
    c0, step, inv_bw = nonneg_weighted_lstsq(design, t, 1 / t)
    return float(c0), float(step), (1 / inv_bw / 1e6 if inv_bw > 0 else math.inf)


def ring_model(alpha_step_ms: float, busbw_gbps: float, tp: int, p2p: Optional[bool] = None,
               overhead_ms: float = 0.0) -> AlphaBeta:
    """The ring model for `tp` ranks (plus a fixed `overhead_ms` per call), as an AlphaBeta."""
    return AlphaBeta(overhead_ms + 2 * (tp - 1) * alpha_step_ms, 2 * (tp - 1) / tp / (busbw_gbps * 1e6), tp, p2p)

