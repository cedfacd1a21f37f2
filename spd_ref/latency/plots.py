"""Figures from bench/peer JSONL: decode latency against SPD ratio, and all-reduce cost against size.

    python -m spd_ref.latency.plots results/h100.jsonl     # writes results/h100_decode.png, _allreduce.png

Decode: one panel per (shape, batch); a solid line per (TP degree, P2P) from the baseline (ratio 0)
to SPD on every block, the no-communication floor as a dashed line of the same colour, and the peer
baseline (transformers tp_plan) as a marker at ratio 0. All-reduce: time per operation against
message size (log-log) per (TP, P2P), with the fitted alpha-beta line from spd_ref.latency.commcost.
`plot_decode_grid`: one panel per (batch, shape) over several runs or predicted rows (a band over
comm models for spd_ref.latency.predict); used by spd_ref.latency.report and spd_ref.latency.predict.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

from spd_ref.latency.commcost import allreduce_kind, decode_groups, fit_rows, load_rows


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, in CI and on the GPU machines
    import matplotlib.pyplot as plt

    return plt


def _label(tp: int, p2p: bool, kind: Optional[str] = None, ctx: Optional[int] = None) -> str:
    """'TP 2 P2P on', plus the all-reduce kind where it is not NCCL and a cache that is not 512."""
    label = f"TP {tp}" + ("" if tp == 1 else (" P2P on" if p2p else " P2P off"))
    if tp > 1 and kind and kind != "nccl":
        label += f" {kind}"
    return label + (f" cache {ctx}" if ctx and ctx != 512 else "")


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
            impl, gshape, tp, p2p, gbatch, ctx = key[:6]
            if (gshape, gbatch) != (shape, batch):
                continue
            label = _label(tp, p2p, key[-1], ctx)
            color = colors.setdefault(label, f"C{len(colors)}")
            if impl != "spd_ref":
                if g["base"] and key[6]:  # the compiled peer only: eager is 10x slower and flattens the axes
                    ax.plot([0], [g["base"]["ms_median"]], marker="*", ms=11, ls="", color=color,
                            label=f"{label} transformers tp_plan (compiled)")
                continue
            pts = ([(0.0, g["base"]["ms_median"])] if g["base"] else []) + \
                [(r, row["ms_median"]) for r, row in sorted(g["spd"].items())]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", color=color, label=label + ("" if key[6] else " (eager)"))
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


def _series_label(r: dict) -> tuple[str, str]:
    """(label, colour key): the colour follows TP x P2P (x what-if bandwidth), not the note."""
    label = _label(r["tp"], r["p2p"])
    if r.get("what_if_busbw_gbps"):
        label += f" at {r['what_if_busbw_gbps']:g} GB/s"
    return label + (f" ({r['series_note']})" if r.get("series_note") else ""), label


def plot_decode_grid(rows: list[dict], path, title: str, primary: Optional[str] = None) -> Optional[Path]:
    """Decode ms/token against SPD ratio, one panel per (batch, shape), a line per TP x P2P (and
    what-if bandwidth), its no-comm floor dashed (TP 1: the baseline). Rows with `comm_model`
    (predictions): the line is `primary`, the shaded band spans every comm_model. None without rows."""
    rows = [r for r in rows if r.get("kind") == "decode" and (r.get("impl") or "spd_ref") == "spd_ref"]
    if not rows:
        return None
    shapes = sorted({r["shape"] for r in rows}, key=lambda s: (len(s), s))
    batches = sorted({r["batch"] for r in rows})
    plt = _pyplot()
    fig, axes = plt.subplots(len(batches), len(shapes), figsize=(4.8 * len(shapes), 3.9 * len(batches)),
                             squeeze=False)
    colors: dict[str, str] = {}
    for (i, batch), (j, shape) in ((ib, js) for ib in enumerate(batches) for js in enumerate(shapes)):
        ax, series = axes[i][j], defaultdict(lambda: {"pts": defaultdict(dict), "floor": {}})
        for r in rows:
            if (r["shape"], r["batch"]) != (shape, batch):
                continue
            s, model = series[_series_label(r)], r.get("comm_model")
            if r.get("no_comm") or (r["tp"] == 1 and not r.get("spd_ratio")):
                s["floor"][model] = r["ms_median"]
            if not r.get("no_comm"):
                s["pts"][r["spd_ratio"] or 0.0][model] = r["ms_median"]
        for (label, ckey), s in sorted(series.items(), key=lambda kv: kv[0]):
            color = colors.setdefault(ckey, f"C{len(colors)}")
            xs = sorted(s["pts"])
            line = [s["pts"][x].get(primary, next(iter(s["pts"][x].values()))) for x in xs]
            ax.plot(xs, line, marker="o", ms=4, color=color, label=label,
                    mfc="white" if label != ckey else color)  # hollow markers: noted series (pre-fusion)
            if any(len(s["pts"][x]) > 1 for x in xs):
                ax.fill_between(xs, [min(s["pts"][x].values()) for x in xs], [max(s["pts"][x].values()) for x in xs],
                                color=color, alpha=0.15, lw=0)
            if s["floor"]:
                ax.axhline(s["floor"].get(primary, next(iter(s["floor"].values()))), color=color, ls="--", lw=1)
        ax.set_title(f"{shape}, batch {batch}", fontsize=9)
        ax.set_xlabel("SPD ratio (share of blocks with one sync point)", fontsize=8)
        ax.set_ylabel("decode ms / token (median)", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower left")
    fig.suptitle(title + "\ndashed: no-communication floor" + ("; band: range over comm models" if primary else ""),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_allreduce(rows: list[dict], path: Path) -> Optional[Path]:
    """All-reduce time per operation against bytes, with the alpha-beta fit; None without rows."""
    by = defaultdict(list)
    for r in rows:
        if r.get("kind") == "allreduce":
            by[(r["tp"], r["p2p"], allreduce_kind(r))].append((r["bytes"], r["ms_median"] * 1e3))
    if not by:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (key, pts) in enumerate(sorted(by.items())):
        xs, ys = zip(*sorted(pts))
        ax.plot(xs, ys, "o", color=f"C{i}", label=_label(*key))
        fit = fit_rows(rows, key[2])[key[:2]]
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
        print("usage: python -m spd_ref.latency.plots RESULTS.jsonl [...]", file=sys.stderr)
        return 2
    for path in argv:
        for made in plot_results(path):
            print(f"wrote {made}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
