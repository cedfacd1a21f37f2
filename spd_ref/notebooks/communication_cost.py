"""Notebook 01 (communication cost): live and recorded all-reduce and decode measurements, the ceiling
on what SPD can save, and the decode cost model with its figure and sliders (DESIGN.md, Notebooks).
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from spd_ref.latency.commcost import (BF16_BYTES, AlphaBeta, allreduce_kind, fit_rows, load_rows, predict_decode,
                                     print_table, saving_table)
from spd_ref.launch import launch
from spd_ref.notebooks.figures import as_image, new_figure

REFERENCE = Path(__file__).resolve().parents[2] / "results" / "reference_h100.json"


# ---- measurements ---------------------------------------------------------------------------------
def live_allreduce(nproc: int = 2, sizes: str = "1K,4K,16K,64K,256K,1M,4M", timeout_s: float = 180) -> list[dict]:
    """bench rows from `nproc` gloo processes on this CPU (through spd_ref.launch): the all-reduce
    microbenchmark, and a decode step of the tiny shape as baseline, SPD on every block, no comm."""
    with tempfile.TemporaryDirectory() as tmp:  # live rows are this machine's: they stay out of results/
        out = Path(tmp) / "live.jsonl"
        # 20 replays per size and 30 decode steps over 64 cached tokens: about 20 s on 2 cores.
        done = launch(nproc, ["bench", "--ar-bench", "--ar-sizes", sizes, "--ar-repeats", "20", "--warmup", "3",
                              "--shape", "tiny", "--batch", "1", "--prompt-lens", "none", "--ctx", "64",
                              "--spd-ratios", "0,1", "--no-comm", "--repeats", "30", "--out", str(out)],
                      timeout_s=timeout_s, cpu=True)
        if done.returncode != 0:
            raise RuntimeError(f"live benchmark failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        return load_rows([str(out)])


def load_recorded(results_dir: Path = REFERENCE.parent / "h100") -> tuple[list[dict], str]:
    """(rows, where they came from): the current GPU all-reduce/decode rows of the 4 x H100 record
    (results/h100/**/*.jsonl as its table counts them: `latency_report.current_rows`, one run per
    setting, no experiments or one-GPU shard floors), or, while none are recorded yet, the
    reference table of RESOURCES.md (results/reference_h100.json)."""
    from spd_ref.latency.report import current_rows

    files = sorted(Path(results_dir).rglob("*.jsonl"))
    rows = current_rows(r for r in load_rows(str(f) for f in files)
                        if r.get("kind") in ("allreduce", "decode") and r.get("gpu") not in (None, "cpu"))
    if rows:
        return rows, f"{len(rows)} GPU rows from {', '.join(str(f.relative_to(results_dir)) for f in files)}"
    reference = json.loads(REFERENCE.read_text())
    return reference["rows"], reference["provenance"]["summary"]


def print_fits(rows: list[dict]) -> None:
    """The alpha-beta fit of each (TP, P2P, all-reduce kind) microbenchmark in `rows`, one line each."""
    for kind in sorted({allreduce_kind(r) for r in rows if r.get("kind") == "allreduce"}):
        for (tp, p2p), fit in fit_rows(rows, kind).items():
            print(f"TP {tp}, P2P {'on' if p2p else 'off'}, {kind}: alpha = {fit.alpha_ms * 1e3:.1f} us, "
                  f"bus bandwidth = {fit.busbw_gbps:.2f} GB/s ({fit.points} message sizes)")


def _ours(r: dict) -> bool:
    """A compiled decode row of this runtime (not the transformers peer, not an eager variant)."""
    return r.get("kind") == "decode" and (r.get("impl") or "spd_ref") == "spd_ref" and r.get("compiled") is not False


def ceiling_table(rows: list[dict]) -> list[dict]:
    """commcost.saving_table plus, on baselines, the cost of one sync inside the model, and on SPD
    rows the ceiling: removing k of S syncs saves at most comm_share x k / S (half of it at k = L)."""
    out, base_syncs = [], {}
    for r in saving_table(rows):
        key = (r["impl"], r["shape"], r["tp"], r["p2p"], r["batch"], r["ctx"], r["compiled"], r["allreduce"])
        if r["spd_ratio"] == 0:
            base_syncs[key] = r["syncs"]
            if r["floor_ms"] is not None and r["syncs"]:
                r["per_sync_us"] = (r["ms"] - r["floor_ms"]) / r["syncs"] * 1e3
            out.append(r)
        elif r["comm_share"] is not None and base_syncs.get(key):
            out.append(dict(r, ceiling=r["comm_share"] * (1 - r["syncs"] / base_syncs[key])))
    return out


def in_model_sync_us(table: list[dict], shape: str, tp: int, p2p: bool = True, batch: int = 1,
                     kind: str = "nccl") -> float:
    """The measured cost of one sync inside the decode step of one setting (from ceiling_table)."""
    for r in table:
        if (r["shape"], r["tp"], r["p2p"], r["batch"], r["allreduce"]) == (shape, tp, p2p, batch, kind) \
                and "per_sync_us" in r:
            return r["per_sync_us"]
    raise ValueError(f"no baseline and no-comm decode rows for {shape} tp={tp} p2p={p2p} batch={batch} {kind}")


# ---- the decode cost model -----------------------------------------------------------------------
@dataclass(frozen=True)
class DecodeCostModel:
    """decode ms/token = floor(N) + syncs x t_sync, t_sync = alpha + 2(N-1)/N x bytes / busbw.

    [ours] The compute floor is serial + parallel / N (Amdahl), fitted to recorded no-comm floors of
    one shape and batch, and kept for other batches: decode at small batch is bound by reading the
    weights, so this holds up to a few tens of tokens and underestimates compute beyond.
    """

    shape: str
    layers: int
    hidden: int
    batch: int
    serial_ms: float
    parallel_ms: float

    def floor_ms(self, tp: int) -> float:
        return self.serial_ms + self.parallel_ms / tp

    def predict(self, tp: int, busbw_gbps: float, alpha_us: float, spd_ratio: float,
                batch: Optional[int] = None) -> dict:
        if tp < 2:
            raise ValueError(f"tp={tp}: one rank has no sync point to drop; use tp >= 2")
        batch = batch or self.batch
        spd_blocks = math.floor(spd_ratio * self.layers + 0.5)  # the count spd_ref.plan.num_spd_blocks gives
        allreduce = AlphaBeta(alpha_us / 1e3, 0.0, tp).with_busbw(busbw_gbps)
        floor = self.floor_ms(tp)
        base, spd = predict_decode(floor, self.layers, spd_blocks, allreduce, batch, self.hidden)
        return dict(tp=tp, busbw_gbps=busbw_gbps, alpha_us=alpha_us, batch=batch, spd_ratio=spd_ratio,
                    per_sync_us=allreduce.time_ms(batch * self.hidden * BF16_BYTES) * 1e3, floor_ms=floor,
                    baseline_ms=base, spd_ms=spd, comm_share=(base - floor) / base, saving=(base - spd) / base)


COST_COLUMNS = [("tp", ""), ("busbw_gbps", ".0f"), ("alpha_us", ".1f"), ("batch", ""), ("spd_ratio", ".2f"),
                ("per_sync_us", ".1f"), ("floor_ms", ".2f"), ("baseline_ms", ".2f"), ("spd_ms", ".2f"),
                ("comm_share", ".0%"), ("saving", ".1%")]


def fit_cost_model(rows: list[dict], shape: str = "llama2-7b", batch: int = 1) -> DecodeCostModel:
    """Fit floor(N) = serial + parallel / N to the compute-only decode times of `shape` at `batch`:
    the no-comm rows, and TP 1 baselines (one rank has nothing to communicate)."""
    pts = [r for r in rows if _ours(r) and r["shape"] == shape and r["batch"] == batch
           and (r.get("no_comm") or r["tp"] == 1)]
    if len({r["tp"] for r in pts}) < 2:
        raise ValueError(f"need compute floors of {shape} at batch {batch} for 2 or more TP degrees, got "
                         f"{sorted({r['tp'] for r in pts})}. Fix: record `bench --no-comm` at other TP degrees.")
    inv_tp, ms = np.array([1 / r["tp"] for r in pts]), np.array([r["ms_median"] for r in pts])
    (serial, parallel), *_ = np.linalg.lstsq(np.stack([np.ones_like(inv_tp), inv_tp], 1), ms, rcond=None)
    return DecodeCostModel(shape, pts[0]["layers"], pts[0]["hidden"], batch, float(serial), float(parallel))


def plot_cost_model(model: DecodeCostModel, alpha_us: float, measured: Sequence[dict] = (), tps=(2, 4, 8)):
    """Left: predicted saving of SPD on every block against bus bandwidth, batch 1 and 64. Right:
    decode ms against SPD ratio at 300 GB/s, the measured decode times of the shape as markers."""
    fig, (left, right) = new_figure(1, 2, figsize=(10, 3.6))
    bws, ratios = np.logspace(0, 3, 40), np.linspace(0, 1, 11)
    for i, tp in enumerate(tps):
        for batch, ls in ((1, "-"), (64, ":")):
            left.plot(bws, [100 * model.predict(tp, bw, alpha_us, 1.0, batch)["saving"] for bw in bws],
                      ls=ls, color=f"C{i}", label=f"TP {tp}, batch {batch}")
        right.plot(ratios, [model.predict(tp, 300, alpha_us, r)["spd_ms"] for r in ratios], color=f"C{i}",
                   label=f"TP {tp} model")
        right.axhline(model.floor_ms(tp), color=f"C{i}", ls="--", lw=1)
        pts = [(r["spd_ratio"], r["ms_median"]) for r in measured if _ours(r) and r["tp"] == tp
               and (r["shape"], r["batch"]) == (model.shape, model.batch) and r["p2p"] and not r["no_comm"]]
        if pts:
            right.plot(*zip(*sorted(pts)), "o", color=f"C{i}", label=f"TP {tp} measured (P2P on)")
    left.set(xscale="log", xlabel="bus bandwidth (GB/s)", ylabel="saving of SPD on every block (%)",
             title=f"{model.shape}, alpha {alpha_us:.1f} us")
    right.set(xlabel="SPD ratio", ylabel="decode ms / token", ylim=(0, None),
              title=f"batch {model.batch}, 300 GB/s (dashed: no comm)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return as_image(fig)


def cost_explorer(model: DecodeCostModel, alpha_us: float):
    """ipywidgets.interactive over the cost model: TP degree, bus bandwidth, alpha, batch, SPD ratio."""
    import ipywidgets as widgets
    from IPython.display import display

    def show(tp: int, busbw_gbps: float, alpha_us: float, batch: int, spd_ratio: float) -> None:
        p = model.predict(tp, busbw_gbps, alpha_us, spd_ratio, batch)
        print_table([p], COST_COLUMNS)
        fig, ax = new_figure(figsize=(6, 1.8))
        for y, total in ((1, p["baseline_ms"]), (0, p["spd_ms"])):
            ax.barh(y, p["floor_ms"], color="C0", label="compute" if y else None)
            ax.barh(y, total - p["floor_ms"], left=p["floor_ms"], color="C3", label="all-reduce" if y else None)
        ax.set(yticks=[0, 1], yticklabels=[f"SPD {spd_ratio:.0%}", "baseline"], xlabel="decode ms / token")
        ax.legend(fontsize=7, loc="lower right")
        display(as_image(fig))

    return widgets.interactive(
        show, tp=widgets.IntSlider(value=4, min=2, max=8, description="TP degree"),
        busbw_gbps=widgets.FloatLogSlider(value=300, base=10, min=0, max=3, step=0.001, readout_format=".0f",
                                          description="bus GB/s"),
        alpha_us=widgets.FloatSlider(value=round(alpha_us, 1), min=1, max=100, step=0.5, description="alpha (us)"),
        batch=widgets.SelectionSlider(options=[1, 4, 16, 64, 256], value=1, description="batch"),
        spd_ratio=widgets.FloatSlider(value=1.0, min=0, max=1, step=0.05, description="SPD ratio"))
