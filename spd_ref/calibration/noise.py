"""How much of a sensitivity is noise: a bootstrap over the calibration windows (METHOD.md s.3 [ours]).

The scan's s_l is a difference of two perplexities on the same windows. Which windows were drawn
moves it: the issue that added this measured blocks scoring -2% of the base perplexity at 8 x 256
tokens, where tau1 was 0.5% (now 2%). [ours] Resampling the windows with replacement (B draws; the same
resample for every suffix, so the differences stay paired) and recomputing every s_l / PPL_TP gives
an interval per block; its width says which thresholds the data can resolve. No model runs: the scan
keeps each window's NLL for every suffix.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from spd_ref.calibration.sensitivity import SensitivityScan

DRAWS = 1000   # [ours] bootstrap resamples
LEVEL = 0.95   # [ours] central interval


@dataclass
class ScanIntervals:
    """Per block, the bootstrap interval [low, high] of s_l / PPL_TP, and its half-width."""

    low: list[float]
    high: list[float]

    @property
    def half_width(self) -> list[float]:
        return [(h - l) / 2 for l, h in zip(self.low, self.high)]

    def median_half_width(self) -> float:
        return float(torch.tensor(self.half_width).median())


def relative_draws(scan: SensitivityScan, draws: int = DRAWS, seed: int = 0) -> torch.Tensor:
    """(draws, L) bootstrap replicates of s_l / PPL_TP, windows resampled with replacement."""
    if not scan.window_nll or not scan.tokens_per_window:
        raise ValueError("this scan has no per-window NLL (an old plan or a hand-made scan). "
                         "Fix: run spd_ref.calibration.sensitivity.sensitivity_scan again.")
    nll = torch.tensor(scan.window_nll, dtype=torch.float64)  # (L + 1, n)
    n = nll.shape[1]
    if n < 2:
        raise ValueError("one calibration window cannot be resampled; use two or more.")
    rows = torch.randint(0, n, (draws, n), generator=torch.Generator().manual_seed(seed))
    ppl = torch.exp(nll[:, rows].mean(-1) / scan.tokens_per_window)  # (L + 1, draws)
    return ((ppl[:-1] - ppl[1:]) / ppl[-1]).T


def scan_intervals(scan: SensitivityScan, draws: int = DRAWS, level: float = LEVEL, seed: int = 0) -> ScanIntervals:
    """The central `level` bootstrap interval of every block's relative sensitivity."""
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1), e.g. 0.95.")
    reps = relative_draws(scan, draws, seed)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(reps, q, dim=0)
    return ScanIntervals(low.tolist(), high.tolist())
