"""Figures from bench/peer JSONL: decode latency against SPD ratio, and all-reduce cost against size.

    python -m spd_ref.plots_latency results/h100.jsonl     # writes results/h100_decode.png, _allreduce.png

Decode: one panel per (shape, batch); a solid line per (TP degree, P2P) from the baseline (ratio 0)
to SPD on every block, the no-communication floor as a dashed line of the same colour, and the peer
baseline (transformers tp_plan) as a marker at ratio 0. All-reduce: time per operation against
message size (log-log) per (TP, P2P), with the fitted alpha-beta line from spd_ref.commcost.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

from .commcost import decode_groups, fit_rows, load_rows


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, in CI and on the GPU machines
    import matplotlib.pyplot as plt

    return plt


def _label(tp: int, p2p: bool) -> str:
    return f"TP {tp}" + ("" if tp == 1 else (" P2P on" if p2p else " P2P off"))


def plot_decode(rows: list[dict], path: Path) -> Optional[Path]:
    """Decode ms/token against SPD ratio; None when there are no decode rows."""
    groups = decode_groups(rows)
    panels = sorted({(k[1], k[4]) for k in groups})
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    colors = {}
    for ax, (shape, batch) in zip(axes[0], panels):
        for key, g in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
            impl, gshape, tp, p2p, gbatch = key[:5]
            if (gshape, gbatch) != (shape, batch):
                continue
            color = colors.setdefault((tp, p2p), f"C{len(colors)}")
            if impl != "spd_ref":
                if g["base"]:
                    ax.plot([0], [g["base"]["ms_median"]], marker="*", ms=11, ls="", color=color,
                            label=f"{_label(tp, p2p)} transformers tp_plan" + (" (compiled)" if key[6] else ""))
                continue
            pts = ([(0.0, g["base"]["ms_median"])] if g["base"] else []) + \
                [(r, row["ms_median"]) for r, row in sorted(g["spd"].items())]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", color=color, label=_label(tp, p2p) + ("" if key[6] else " (eager)"))
            if g["floor"]:
                ax.axhline(g["floor"]["ms_median"], color=color, ls="--", lw=1)
        ax.set_title(f"{shape}, batch {batch} (dashed: no communication)", fontsize=9)
        ax.set_xlabel("SPD ratio (share of blocks with one sync point)")
        ax.set_ylabel("decode ms / token (median)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_allreduce(rows: list[dict], path: Path) -> Optional[Path]:
    """All-reduce time per operation against bytes, with the alpha-beta fit; None without rows."""
    by = defaultdict(list)
    for r in rows:
        if r.get("kind") == "allreduce":
            by[(r["tp"], r["p2p"])].append((r["bytes"], r["ms_median"] * 1e3))
    if not by:
        return None
    fits = fit_rows(rows)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (key, pts) in enumerate(sorted(by.items())):
        xs, ys = zip(*sorted(pts))
        ax.plot(xs, ys, "o", color=f"C{i}", label=_label(*key))
        fit = fits[key]
        ax.plot(xs, [fit.time_ms(x) * 1e3 for x in xs], "-", color=f"C{i}", lw=1,
                label=f"  fit: {fit.alpha_ms * 1e3:.1f} us + bytes / ({fit.busbw_gbps:.0f} GB/s bus)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("all-reduce time (us, median)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_results(jsonl: str) -> list[Path]:
    """Write the figures of one JSONL file beside it; returns the paths written."""
    src = Path(jsonl)
    rows = load_rows([str(src)])
    made = [plot_decode(rows, src.with_name(f"{src.stem}_decode.png")),
            plot_allreduce(rows, src.with_name(f"{src.stem}_allreduce.png"))]
    return [p for p in made if p is not None]


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m spd_ref.plots_latency RESULTS.jsonl [...]", file=sys.stderr)
        return 2
    for path in argv:
        for made in plot_results(path):
            print(f"wrote {made}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
