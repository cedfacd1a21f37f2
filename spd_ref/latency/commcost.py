"""What an all-reduce costs, and what SPD saves: the `commcost` tables and report from bench rows.

    python -m spd_ref commcost --results results/*.jsonl [--what-if 8:on,8:off:10]

The all-reduce model, t(bytes) = alpha + beta * bytes per (tp, p2p) and the ring model beyond the
measured TP degrees, and their fits live in spd_ref.latency.alphabeta (imported here, so
`commcost.fit_alpha_beta` etc. keep working).

What SPD saves per token: removed sync points x t(bytes per sync), bytes = batch x hidden x 2 (bf16),
so `predict_decode` gives baseline = floor + 2L t and SPD = floor + (2L - k) t from the measured
compute floor (the no-communication run). The report compares these predictions with the measured
decode times (relative error), and prints the SPD saving with two efficiencies:
- eff_ar = (baseline - SPD) / (removed syncs x all-reduce time at that message size, interpolated in
  the microbenchmark of the same tp and p2p): did removing a sync save what a sync costs alone?
- eff_floor = (baseline - SPD) / ((baseline - floor) x removed / baseline syncs): did it save its
  share of the communication time measured inside the model?
Both near 1 mean SPD removes communication without adding anything (DESIGN.md, performance protocol).
"""
from __future__ import annotations

import glob
import json
from collections import defaultdict
from typing import Iterable, Optional, Sequence

import numpy as np

# The model and its fits; re-exported: callers and docs name them as commcost.X.
from spd_ref.latency.consistency import consistent_group
from spd_ref.__main__ import CommandParser, existing_glob
from spd_ref.latency.alphabeta import BF16_BYTES, AlphaBeta, fit_alpha_beta, fit_ring, fit_ring_overhead, ring_model  # noqa: F401


def predict_decode(floor_ms: float, layers: int, spd_blocks: int, model: AlphaBeta, batch: int,
                   hidden: int, dtype_bytes: int = BF16_BYTES) -> tuple[float, float]:
    """(baseline ms, SPD ms) per token: the compute floor plus the predicted all-reduces
    (2 per TP block, 1 per SPD block, each of batch x hidden x dtype_bytes)."""
    if not 0 <= spd_blocks <= layers:
        raise ValueError(f"spd_blocks={spd_blocks} must be between 0 and layers={layers}")
    per_sync = model.time_ms(batch * hidden * dtype_bytes)
    return floor_ms + 2 * layers * per_sync, floor_ms + (2 * layers - spd_blocks) * per_sync


# ---- reading results ------------------------------------------------------------------------------
def load_rows(paths: Iterable[str]) -> list[dict]:
    rows = []
    for pattern in paths:
        files = sorted(glob.glob(pattern)) or [pattern]
        for path in files:
            with open(path) as f:
                rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def allreduce_kind(r: dict) -> str:
    """The sync-point all-reduce of a row ("nccl" for rows from before there was a choice)."""
    return r.get("allreduce") or "nccl"


def fit_rows(rows: Iterable[dict], kind: str = "nccl") -> dict[tuple[int, bool], AlphaBeta]:
    """One AlphaBeta per (tp, p2p) from the all-reduce rows of one kind (median times per op)."""
    by = defaultdict(list)
    for r in rows:
        if r.get("kind") == "allreduce" and allreduce_kind(r) == kind:
            by[(r["tp"], r["p2p"])].append((r["bytes"], r["ms_median"]))
    return {k: fit_alpha_beta(*zip(*v), tp=k[0], p2p=k[1]) for k, v in sorted(by.items())}


def interpolate_ar(rows: Iterable[dict], tp: int, p2p: bool, nbytes: float, kind: str = "nccl") -> Optional[float]:
    """Measured all-reduce ms of one kind at `nbytes`, linear between the two nearest measured sizes
    (None outside the measured range)."""
    pts = sorted((r["bytes"], r["ms_median"]) for r in rows if r.get("kind") == "allreduce"
                 and r["tp"] == tp and r["p2p"] == p2p and allreduce_kind(r) == kind)
    if not pts or not pts[0][0] <= nbytes <= pts[-1][0]:
        return None
    xs, ys = zip(*pts)
    return float(np.interp(nbytes, xs, ys))


def compute_label(r: dict) -> str:
    """How a row's compute was built: attention implementation, the decode GEMV when not torch's, inductor
    settings given by environment, and "shard" for a one-GPU shard proxy (bench --shard-of), e.g. "sdpa",
    "math+COORDINATE_DESCENT_TUNING=1", "sdpa+gemv-triton", "attn-triton" (the split-KV kernel), "attn-auto"."""
    attention = r.get("attention") or "sdpa"
    parts = [f"attn-{attention}" if attention in ("triton", "auto") else attention]
    parts += [f"gemv-{r['linear']}"] if r.get("linear") not in (None, "torch") else []
    parts += [f"{k.replace('TORCHINDUCTOR_', '')}={v}" for k, v in sorted((r.get("inductor") or {}).items())]
    return "+".join(parts + (["shard"] if r.get("shard_proxy") else []))


def _group_key(r: dict) -> tuple:
    """(impl, shape, tp, p2p, batch, ctx, compiled, layers, compute): one decode setting, whatever the
    all-reduce."""
    return (r.get("impl") or "spd_ref", r["shape"], r["tp"], r["p2p"], r["batch"], r["ctx"], r["compiled"],
            r.get("layers"), compute_label(r))


def decode_groups(rows: Iterable[dict]) -> dict[tuple, dict]:
    """Decode rows of one run setting and all-reduce kind (the key's last item): {key: {"base": row,
    "floor": row, "spd": {ratio: row}}}. The floor has no all-reduce: it joins every kind's group of its
    setting. A later row of the same setting replaces an earlier one (reruns append)."""
    groups: dict[tuple, dict] = defaultdict(lambda: {"base": None, "floor": None, "spd": {}})
    floors = {}
    for r in rows:
        if r.get("kind") != "decode":
            continue
        if r.get("no_comm"):
            floors[_group_key(r)] = r
            continue
        g = groups[_group_key(r) + (allreduce_kind(r),)]
        if not r.get("spd_ratio"):
            g["base"] = r
        else:
            g["spd"][r["spd_ratio"]] = r
    for key, floor in floors.items():
        kinds = [k for k in groups if k[:-1] == key] or [key + ("nccl",)]
        for k in kinds:
            groups[k]["floor"] = floor
    return dict(groups)


def saving_table(rows: list[dict]) -> list[dict]:
    """Per decode setting and SPD ratio: baseline, SPD, floor, saving, comm share, both efficiencies."""
    out = []
    for key, g in sorted(decode_groups(rows).items(), key=lambda kv: tuple(map(str, kv[0]))):
        base, floor = g["base"], g["floor"]
        if base is None:
            continue
        share = (base["ms_median"] - floor["ms_median"]) / base["ms_median"] if floor else None
        entries = [(0.0, base)] + sorted(g["spd"].items())
        # Efficiencies only from a group whose rows agree with each other (spd_ref.latency.consistency).
        group_rows = [r for _, r in entries] + ([floor] if floor else [])
        trusted = consistent_group(group_rows)
        checked = any(r.get("consistent") is not None for r in group_rows)  # rows from before the check: None
        for ratio, r in entries:
            removed = (base["sync_points_per_token"] or 0) - (r["sync_points_per_token"] or 0)
            saved = base["ms_median"] - r["ms_median"]
            t_ar = (interpolate_ar(rows, r["tp"], r["p2p"], r["sync_bytes"], key[-1])
                    if r.get("sync_bytes") else None)
            eff_ar = saved / (removed * t_ar) if removed and t_ar and trusted else None
            floor_comm = (base["ms_median"] - floor["ms_median"]) if floor else None
            eff_floor = (saved / (floor_comm * removed / base["sync_points_per_token"])
                         if removed and floor_comm and trusted else None)
            out.append(dict(impl=key[0], shape=r["shape"], tp=r["tp"], p2p=r["p2p"], batch=r["batch"],
                            ctx=r["ctx"], compiled=r["compiled"], allreduce=key[-1], spd_ratio=ratio,
                            compute=key[-2],
                            syncs=r["sync_points_per_token"], ms=r["ms_median"], p90=r["ms_p90"],
                            floor_ms=floor["ms_median"] if floor else None, saving=saved / base["ms_median"],
                            comm_share=share, eff_ar=eff_ar, eff_floor=eff_floor,
                            consistent=trusted if checked else None))
    return out


def prediction_table(rows: list[dict], fits: dict) -> list[dict]:
    """Measured decode ms against floor + syncs x t(sync_bytes), for settings with a floor and a fit."""
    out = []
    for key, g in decode_groups(rows).items():
        floor, model = g["floor"], fits.get((key[2], key[3]))
        if floor is None or model is None or key[-1] != "nccl":  # the fits are NCCL's
            continue
        for r in ([g["base"]] if g["base"] else []) + [g["spd"][k] for k in sorted(g["spd"])]:
            pred = floor["ms_median"] + r["sync_points_per_token"] * model.time_ms(r["sync_bytes"])
            out.append(dict(shape=r["shape"], tp=r["tp"], p2p=r["p2p"], batch=r["batch"],
                            spd_ratio=r["spd_ratio"] or 0.0, measured=r["ms_median"], predicted=pred,
                            rel_err=(pred - r["ms_median"]) / r["ms_median"]))
    return sorted(out, key=lambda d: tuple(map(str, d.values())))


# ---- printing -------------------------------------------------------------------------------------
def _fmt(v, spec: str = ".3f") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "on" if v else "off"
    return format(v, spec) if isinstance(v, float) else str(v)


def print_table(dicts: list[dict], columns: Sequence[tuple[str, str]]) -> None:
    """A plain aligned table of `dicts`; columns are (key, format spec)."""
    cells = [[k for k, _ in columns]] + [[_fmt(d.get(k), spec) for k, spec in columns] for d in dicts]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))




def print_section(title: str, dicts: list[dict], columns: Sequence[tuple[str, str]]) -> None:
    """`title`, then the table of `dicts` (print_table); nothing at all when there are no rows."""
    if dicts:
        print(title)
        print_table(dicts, columns)

def parse_what_if(spec: str) -> list[tuple[int, bool, Optional[float]]]:
    """'8:on,8:off:10' -> [(8, True, None), (8, False, 10.0)]: TP degree, P2P, bus GB/s override."""
    out = []
    for item in filter(None, spec.split(",")):
        parts = item.split(":")
        try:
            if len(parts) not in (2, 3) or parts[1] not in ("on", "off") or int(parts[0]) < 1:
                raise ValueError
            out.append((int(parts[0]), parts[1] == "on", float(parts[2]) if len(parts) == 3 else None))
        except ValueError:
            raise ValueError(f"--what-if item {item!r} is not TP:on|off[:BUSBW_GBPS]. Fix: write e.g. 8:off:10") from None
    return out


def report(rows: list[dict], what_if: Sequence[tuple[int, bool, Optional[float]]] = ()) -> None:
    fits = fit_rows(rows)
    table = []
    for (tp, p2p), m in fits.items():
        pts = [r for r in rows if r.get("kind") == "allreduce" and r["tp"] == tp and r["p2p"] == p2p]
        errs = [abs(m.time_ms(r["bytes"]) - r["ms_median"]) / r["ms_median"] for r in pts]
        table.append(dict(tp=tp, p2p=p2p, alpha_us=m.alpha_ms * 1e3, busbw_gbps=m.busbw_gbps,
                          points=m.points, max_rel_err=max(errs)))
    print_section("all-reduce fit, t = alpha + beta * bytes (relative least squares):", table,
                  [("tp", ""), ("p2p", ""), ("alpha_us", ".1f"), ("busbw_gbps", ".1f"), ("points", ""),
                   ("max_rel_err", ".2f")])
    rings = {}
    for p2p in sorted({k[1] for k in fits}):
        pts = [(r["tp"], r["bytes"], r["ms_median"]) for r in rows if r.get("kind") == "allreduce" and r["p2p"] == p2p]
        if len({p[0] for p in pts}) >= 2:
            rings[p2p] = fit_ring(pts, p2p)
            print(f"ring model, p2p {_fmt(p2p)}: alpha_step {rings[p2p][0] * 1e3:.1f} us, busbw {rings[p2p][1]:.1f} GB/s")
    print_section("\ndecode ms/token: measured vs floor + syncs x t(bytes per sync):", prediction_table(rows, fits),
                  [("shape", ""), ("tp", ""), ("p2p", ""), ("batch", ""), ("spd_ratio", ".2f"), ("measured", ".3f"),
                   ("predicted", ".3f"), ("rel_err", "+.2f")])
    if what_if:
        print_what_if(rows, fits, rings, what_if)
    print_section("\nSPD saving (decode): eff_ar = saved / (removed syncs x microbenchmark all-reduce at that size);"
                  "\n                      eff_floor = saved / (removed share of (baseline - floor))",
                  saving_table(rows), [("impl", ""), ("shape", ""), ("tp", ""), ("p2p", ""), ("batch", ""),
                                       ("ctx", ""), ("allreduce", ""), ("spd_ratio", ".2f"), ("syncs", ""),
                                       ("ms", ".3f"), ("p90", ".3f"), ("floor_ms", ".3f"), ("saving", ".1%"),
                                       ("comm_share", ".0%"), ("eff_ar", ".2f"), ("eff_floor", ".2f"),
                                       ("consistent", "")])


def print_what_if(rows, fits, rings, what_if) -> None:
    """Predicted saving of 100% SPD per token for other TP degrees / bandwidths, per measured shape."""
    shapes = {(r["shape"], r["layers"], r["hidden"], r["batch"]) for r in rows
              if r.get("kind") == "decode" and r.get("layers")}
    print("\nwhat-if: all-reduce time removed by SPD on every block (ms/token):")
    table = []
    for tp, p2p, bw in what_if:
        model = fits.get((tp, p2p))
        if model is None and p2p in rings:
            model = ring_model(*rings[p2p], tp, p2p)
        if model is None:
            print(f"  tp {tp} p2p {_fmt(p2p)}: no fit (measure it, or two TP degrees for the ring model)")
            continue
        if bw is not None:
            model = model.with_busbw(bw)
        for shape, layers, hidden, batch in sorted(shapes):
            t = model.time_ms(batch * hidden * BF16_BYTES)
            table.append(dict(shape=shape, tp=tp, p2p=p2p, busbw_gbps=model.busbw_gbps, batch=batch,
                              per_sync_us=t * 1e3, baseline_comm_ms=2 * layers * t, spd_saves_ms=layers * t))
    print_table(table, [("shape", ""), ("tp", ""), ("p2p", ""), ("busbw_gbps", ".1f"), ("batch", ""),
                        ("per_sync_us", ".1f"), ("baseline_comm_ms", ".3f"), ("spd_saves_ms", ".3f")])


def cli(argv: Optional[list[str]] = None) -> int:
    p = CommandParser(prog="python -m spd_ref commcost", description=__doc__.split("\n\n")[0],
                      checks=[lambda args: parse_what_if(args.what_if)])
    p.add_argument("--results", type=existing_glob, nargs="+", required=True, help="JSONL files (globs allowed) from bench/peer")
    p.add_argument("--what-if", default="", help="TP:on|off[:BUSBW_GBPS],... e.g. 8:on,4:off:10")
    args = p.parse_args(argv)
    rows = load_rows(args.results)
    if not rows:
        print(f"no rows in {args.results}")
        return 1
    report(rows, parse_what_if(args.what_if))
    return 0
