"""PREDICTED decode latency at a TP degree that was not measured (8 GPUs), from measured rows.

    python -m spd_ref.latency.predict --results results/h100/*.jsonl --tp 8 --out results/predictions/tp8.jsonl \\
        [--figure results/predictions/tp8_prediction.png] [--validate]

Every row written is a prediction (`prediction: true`, `basis`: which measurements and fits), never a
measurement. Per shape (L blocks), batch, P2P setting and SPD ratio r (k = round(r L) SPD blocks):

    ms(N, r) = floor(N) + (2L - k) x kappa x t(N, batch x hidden x 2 bytes)

- floor(N) = a + b/N **[ours]** (spd_ref.latency.floorfit), fitted (relative least squares, a, b >= 0) per shape
  and batch to the measured no-comm floors (TP 1: the baseline; P2P on/off floors averaged). a: what does not shard
  (per-block overheads, the replicated embedding and head), b: what does (weights, KV reads). Rows
  measured before the fusion commit are moved to the current code by subtracting the measured saving
  per block times L (spd_ref.latency.report.fusion_delta) **[ours]**. A shape measured at one TP
  degree only (70B: TP 4): a = L x the median per-block a of the fitted shapes, b = N (floor - a) **[ours]**.
- t(N, bytes): all-reduce time fitted to the microbenchmarks of every measured TP degree, per P2P
  setting, on the message sizes decode uses (<= 1 MiB **[ours]**; spd_ref.latency.commcost). Three models,
  every row says which (`comm_model`):
  "ring+overhead" (primary, **[ours]**): c0 + 2(N-1) alpha_step + 2(N-1)/N bytes / busbw;
  "ring" (c0 = 0, commcost.fit_ring: latency grows 2(N-1)-fold, the high end);
  "flat" (the alpha-beta fit of the largest measured TP, bandwidth term at N: the low end).
- kappa **[ours]**, the in-model calibration factor per comm model and P2P setting: the median over
  measured decode settings of (decode time saved per removed sync: slope of ms vs syncs over the SPD
  ratios) / (the model's all-reduce time at that TP and message size). So each model reproduces the
  in-model sync cost at the measured TP degrees on median (syncs inside the model cost more than
  back-to-back microbenchmark ones), and extrapolates the microbenchmarks' trend in N.
- What-if bandwidth (P2P off only): the same latency with the bus bandwidth replaced (default 10 GB/s,
  the paper's low-bandwidth setting); the row's `what_if_busbw_gbps` says so.
- `--allreduce oneshot`: the sync points use the symmetric-memory one-shot all-reduce, model "oneshot"
  **[ours]**: alpha as measured at the largest measured TP degree (its barrier, held fixed in N), and
  the per-byte term times (N - 1) / (M - 1) from M measured ranks, since each rank reads every peer's
  partial. Fitted to the oneshot microbenchmark rows, kappa to the oneshot decode rows.

`validate` predicts TP 4 from TP 1 and 2 rows only and compares with the measured TP 4 rows: the honest
accuracy of extrapolating one TP doubling. "ring+overhead" needs two TP degrees, so it cannot be part of
that check; "ring" and "flat" bracket it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import median
from typing import Callable, Optional, Sequence

import numpy as np

from spd_ref.__main__ import CommandParser, existing_glob, listed, number, output_file
from spd_ref.latency import commcost as C
from spd_ref.latency.floorfit import floor_fits, measured_floors
from spd_ref.latency.report import code_version, current_rows, fusion_delta, markdown

RATIOS = (0.0, 0.25, 0.5, 0.7, 0.75, 1.0)
COMM_MODELS = ("ring+overhead", "ring", "flat")  # of an NCCL all-reduce
ONESHOT_MODEL = "oneshot"  # the one-shot all-reduce's model (module docstring)
PRIMARY = "ring+overhead"

MAX_FIT_BYTES = 1 << 20  # [ours] fit the all-reduce models on decode-sized messages only


def comm_models(rows: list[dict], p2p: bool, max_bytes: int = MAX_FIT_BYTES,
                kind: str = "nccl") -> dict[str, Callable[[int], C.AlphaBeta]]:
    """name -> (N -> AlphaBeta) from the all-reduce rows of one P2P setting and kind (those that can be fitted)."""
    ar = [r for r in rows if r.get("kind") == "allreduce" and r["p2p"] == p2p and r["bytes"] <= max_bytes
          and C.allreduce_kind(r) == kind]
    pts = [(r["tp"], r["bytes"], r["ms_median"]) for r in ar]
    if len({p[1] for p in pts}) < 2:
        return {}
    if kind == "oneshot":  # module docstring: alpha fixed, bytes read from N - 1 peers
        m = max(p[0] for p in pts)
        fit = C.fit_rows(ar, kind)[(m, p2p)]
        return {ONESHOT_MODEL: lambda n: C.AlphaBeta(fit.alpha_ms, fit.beta_ms_per_byte * (n - 1) / (m - 1), n, p2p)}
    out: dict[str, Callable[[int], C.AlphaBeta]] = {}
    if len({p[0] for p in pts}) >= 2:
        c0, step, bw = C.fit_ring_overhead(pts)
        out["ring+overhead"] = lambda n: C.ring_model(step, bw, n, p2p, overhead_ms=c0)
    step_r, bw_r = C.fit_ring(pts)
    out["ring"] = lambda n: C.ring_model(step_r, bw_r, n, p2p)
    top = C.fit_rows(ar)[(max(p[0] for p in pts), p2p)]
    out["flat"] = lambda n: C.AlphaBeta(top.alpha_ms, 0.0, n, p2p).with_busbw(top.busbw_gbps)
    return out


def sync_slopes(rows: list[dict], p2p: bool, kind: str = "nccl") -> list[dict]:
    """Per measured decode setting with SPD ratios: the decode ms saved per removed sync (fitted slope)."""
    out = []
    for key, g in C.decode_groups(current_rows(rows)).items():
        if key[0] != "spd_ref" or key[3] != p2p or key[-1] != kind or g["base"] is None or not g["spd"]:
            continue
        pts = [(r["sync_points_per_token"], r["ms_median"]) for r in [g["base"], *g["spd"].values()]]
        out.append(dict(tp=key[2], bytes=g["base"]["sync_bytes"], shape=key[1], batch=key[4],
                        slope_ms=float(np.polyfit(*np.asarray(pts, float).T, 1)[0])))
    return out


def in_model_kappa(rows: list[dict], p2p: bool, model: Callable[[int], C.AlphaBeta],
                   kind: str = "nccl") -> tuple[float, list[float]]:
    """(median, all) of the in-model cost per sync / the model's all-reduce time, over decode settings."""
    vals = [s["slope_ms"] / model(s["tp"]).time_ms(s["bytes"]) for s in sync_slopes(rows, p2p, kind)]
    if not vals:
        raise ValueError(f"no decode rows with SPD ratios at p2p={p2p}: cannot calibrate kappa")
    return float(median(vals)), vals


def _row(**kw) -> dict:
    """A bench row (every schema field; spd_ref.latency.schema.make_row) plus the prediction's own fields."""
    from spd_ref.latency.schema import ROW_FIELDS, make_row  # lazy: it imports torch

    extras = {k: kw.pop(k) for k in list(kw) if k not in ROW_FIELDS}
    return {**make_row({}, **kw), **extras}


def predict(rows: list[dict], tp: int, ratios: Sequence[float] = RATIOS,
            what_if_busbw: Sequence[float] = (10.0,), kind: str = "nccl", ctx: int = 512) -> list[dict]:
    """Predicted decode rows at `tp` (floors and every ratio), per shape, batch, P2P (+ what-if), comm model,
    for sync points of one all-reduce kind, from the decode rows with `ctx` cached tokens."""
    rows = [r for r in rows if r.get("kind") != "decode" or r.get("ctx") == ctx]
    pre = any(code_version(r) == "pre-fusion" for r in rows if r.get("kind") == "decode")
    delta = fusion_delta(rows, tps=sorted({r["tp"] for r in rows}))[0] if pre else 0.0
    floors = measured_floors(rows, delta)
    tags = ",".join(sorted({r.get("tag") or "?" for r in rows if r.get("kind") in ("decode", "allreduce")}))
    ar_tps = {p2p: ",".join(map(str, sorted({r["tp"] for r in rows if r.get("kind") == "allreduce" and r["p2p"] == p2p})))
              for p2p in (True, False)}
    out = []
    for (shape, batch), ff in sorted(floor_fits(floors).items(), key=lambda kv: (len(kv[0][0]), kv[0])):
        d = floors[(shape, batch)]
        L, nbytes, floor = d["layers"], batch * d["hidden"] * C.BF16_BYTES, ff.at(tp)
        for p2p in (True, False):
            for bw in [None] + ([*what_if_busbw] if not p2p else []):
                common = dict(kind="decode", impl="spd_ref", shape=shape, layers=L, hidden=d["hidden"], tp=tp, p2p=p2p,
                              batch=batch, ctx=d["ctx"], sync_bytes=nbytes, compiled=True, cuda_graph=True,
                              gpu_count=tp, dtype="bfloat16", tag=f"prediction-tp{tp}", prediction=True, allreduce=kind,
                              what_if_busbw_gbps=bw, floor_ms=floor)
                fbasis = (f"floor a + b/N = {ff.a_ms:.3f} + {ff.b_ms:.3f}/N ms from measured floors at TP "
                          f"{','.join(map(str, ff.tps))} ({tags}; pre-fusion rows - {delta * 1e3:.1f} us x {L} blocks"
                          + ("; one TP degree: a = blocks x median per-block a of fitted shapes" if len(ff.tps) == 1
                             else "") + ")")
                out.append(_row(**common, spd_ratio=None, no_comm=True, sync_points_per_token=0, ms_median=floor,
                                comm_model=None, basis=fbasis))
                for name, make in comm_models(rows, p2p, kind=kind).items():
                    kappa, ks = in_model_kappa(rows, p2p, make, kind)
                    ab = make(tp) if bw is None else make(tp).with_busbw(bw)
                    per_sync = kappa * ab.time_ms(nbytes)
                    basis = (f"{fbasis}; all-reduce {name} fit to microbenchmarks p2p {'on' if p2p else 'off'} at TP "
                             f"{ar_tps[p2p]} (<= {MAX_FIT_BYTES} B) -> {ab.alpha_ms * 1e3:.1f} us + bytes/{ab.busbw_gbps:.1f} GB/s at TP {tp}"
                             + (f" (what-if bus bandwidth {bw:g} GB/s)" if bw else "")
                             + f"; x kappa {kappa:.2f} (median of {len(ks)} in-model slopes)")
                    base = floor + 2 * L * per_sync
                    for r in ratios:
                        k = math.floor(r * L + 0.5)
                        ms = floor + (2 * L - k) * per_sync
                        out.append(_row(**common, spd_ratio=r, no_comm=False, sync_points_per_token=2 * L - k,
                                        ms_median=ms, busbw_gbps=ab.busbw_gbps, comm_model=name, kappa=kappa,
                                        per_sync_ms=per_sync, spd_blocks_count=k, saving=(base - ms) / base,
                                        basis=basis))
    return out


def validate(rows: list[dict], fit_tps: Sequence[int] = (1, 2), target_tp: int = 4) -> list[dict]:
    """Predict `target_tp` from the rows at `fit_tps` only; one line per measured target row and comm model."""
    train = [r for r in rows if r["tp"] in fit_tps]
    delta, _ = fusion_delta(rows, tps=fit_tps)
    preds = predict(train, target_tp, ratios=sorted({r["spd_ratio"] or 0.0 for r in rows if r.get("kind") == "decode"}),
                    what_if_busbw=())
    by = {(p["shape"], p["batch"], p["p2p"], p["spd_ratio"], p["comm_model"]): p for p in preds}
    target = [m for m in current_rows(rows) if m.get("kind") == "decode" and m["tp"] == target_tp
              and (m.get("impl") or "spd_ref") == "spd_ref"]
    mbase = {(m["shape"], m["batch"], m["p2p"]): m["ms_median"] for m in target if m.get("spd_ratio") == 0}
    out = []
    for m in target:
        shift = delta * m["layers"] if code_version(m) == "pre-fusion" else 0.0
        for name in ([None] if m.get("no_comm") else COMM_MODELS):
            p = by.get((m["shape"], m["batch"], m["p2p"], None if m.get("no_comm") else (m["spd_ratio"] or 0.0), name))
            if p is None:
                continue
            pred, line = p["ms_median"] + shift, dict(shape=m["shape"], batch=m["batch"], p2p=m["p2p"])
            line.update(spd_ratio=m["spd_ratio"], what="floor" if m.get("no_comm") else "decode", comm_model=name,
                        code=code_version(m), measured=m["ms_median"], predicted=pred,
                        rel_err=(pred - m["ms_median"]) / m["ms_median"])
            if not m.get("no_comm"):
                pbase, base = by[(m["shape"], m["batch"], m["p2p"], 0.0, name)]["ms_median"] + shift, mbase[
                    (m["shape"], m["batch"], m["p2p"])]
                line.update(saving_measured=1 - m["ms_median"] / base, saving_predicted=1 - pred / pbase)
            out.append(line)
    return out


def summarize_validation(lines: list[dict]) -> list[dict]:
    """Median / max |relative error| per (what, comm_model, p2p)."""
    keys = sorted({(v["what"], v["comm_model"] or "-", v["p2p"]) for v in lines})
    out = []
    for what, name, p2p in keys:
        sel = [v for v in lines if (v["what"], v["comm_model"] or "-", v["p2p"]) == (what, name, p2p)]
        errs = [v["rel_err"] for v in sel]
        gaps = [v["saving_predicted"] - v["saving_measured"] for v in sel if "saving_measured" in v]
        out.append(dict(what=what, comm_model=name, p2p=p2p, n=len(errs), median_abs=float(np.median(np.abs(errs))),
                        max_abs=float(np.max(np.abs(errs))), mean=float(np.mean(errs)),
                        saving_gap=max(gaps, key=abs) if gaps else None))
    return out


def primary_model(preds: list[dict]) -> str:
    """PRIMARY where the rows have it (it needs two measured TP degrees), else the first model they have."""
    present = {p["comm_model"] for p in preds if p["comm_model"]}
    return next((m for m in COMM_MODELS + (ONESHOT_MODEL,) if m in present), PRIMARY)


def summary(preds: list[dict], ratio: float = 0.7) -> list[dict]:
    """Per shape, batch, P2P and what-if: the primary model's floor, per-sync cost, baseline, SPD at
    `ratio` and its saving, the saving's band over the comm models, and the primary saving at 100%."""
    by = {(p["shape"], p["batch"], p["p2p"], p["what_if_busbw_gbps"], p["spd_ratio"], p["comm_model"]): p
          for p in preds if p["comm_model"]}
    primary, out = primary_model(preds), []
    for (shape, batch, p2p, bw, r, model), p in by.items():
        if r != ratio or model != primary:
            continue
        k, band = (shape, batch, p2p, bw), sorted(q["saving"] for q in preds if q["comm_model"] and (
            q["shape"], q["batch"], q["p2p"], q["what_if_busbw_gbps"], q["spd_ratio"]) == (shape, batch, p2p, bw, r))
        full = by.get(k + (1.0, primary))
        out.append(dict(shape=shape, tp=p["tp"], batch=batch, p2p=p2p, bw=bw, floor=p["floor_ms"],
                        per_sync_us=p["per_sync_ms"] * 1e3, base=by[k + (0.0, primary)]["ms_median"], spd=p["ms_median"],
                        saving=p["saving"], band=f"{band[0]:.1%} .. {band[-1]:.1%}",
                        saving100=full["saving"] if full else None))
    return out


def cli(argv: Optional[list[str]] = None) -> int:
    p = CommandParser(prog="python -m spd_ref predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=existing_glob, nargs="+", required=True,
                   help="measured JSONL files (globs allowed)")
    p.add_argument("--tp", type=number(int, 1), default=8)
    p.add_argument("--ratios", type=listed(number(float, 0, 1)), default=",".join(map(str, RATIOS)))
    p.add_argument("--what-if-busbw", type=listed(number(float, 0.001), empty=True), default="10",
                   help="bus GB/s what-ifs for P2P off, comma separated ('' = none)")
    p.add_argument("--allreduce", choices=("nccl", "oneshot"), default="nccl", help="the sync points' all-reduce")
    p.add_argument("--ctx", type=number(int, 1), default=512,
                   help="predict from the decode rows with this many cached tokens")
    p.add_argument("--out", type=output_file, help="write the predicted rows (JSONL, overwritten)")
    p.add_argument("--figure", type=output_file, help="write the PREDICTION figure (PNG)")
    p.add_argument("--validate", action="store_true", help="also predict TP 4 from TP 1/2 and compare")
    args = p.parse_args(argv)
    rows = [r for r in C.load_rows(args.results) if not r.get("prediction")]  # never predict from predictions
    preds = predict(rows, args.tp, args.ratios, args.what_if_busbw, args.allreduce, args.ctx)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in preds))
        print(f"wrote {len(preds)} predicted rows to {args.out}")
    print(f"PREDICTION, TP {args.tp}, {args.allreduce}, model {primary_model(preds)}; band: over the models "
          f"{', '.join(sorted({p['comm_model'] for p in preds if p['comm_model']}))}:\n")
    print(markdown(summary(preds), [("shape", "shape", ""), ("batch", "batch", ""), ("p2p", "P2P", ""),
                                    ("bw", "what-if GB/s", ""), ("floor", "floor ms", ".2f"),
                                    ("per_sync_us", "per sync us", ".1f"), ("base", "baseline ms", ".2f"),
                                    ("spd", "SPD 70% ms", ".2f"), ("saving", "saving at 70%", ".1%"),
                                    ("band", "band at 70%", ""), ("saving100", "saving at 100%", ".1%")]))
    cols = [("what", "rows", ""), ("comm_model", "comm model", ""), ("p2p", "P2P", ""), ("n", "n", ""),
            ("median_abs", "median abs err", ".1%"), ("max_abs", "max abs err", ".1%"), ("mean", "mean err", "+.1%"),
            ("saving_gap", "worst saving err (points)", "+.1%")]
    for fit_tps, target in ([((1, 2), 4), ((1, 2, 4), 4), ((1, 2, 4), 2)] if args.validate else []):
        print(f"\nvalidation: TP {target} predicted from TP {','.join(map(str, fit_tps))} rows, vs measured TP {target}"
              + (" (in sample)" if target in fit_tps else " (out of sample)") + ":\n")
        print(markdown(summarize_validation(validate(rows, fit_tps, target)), cols))
    if args.figure:
        from spd_ref.latency.plots import plot_decode_grid

        made = plot_decode_grid(preds, args.figure, f"PREDICTION (not measured): decode at TP {args.tp}, {args.allreduce}, "
                                f"from {', '.join(args.results)}; line: {primary_model(preds)}, band: the other models",
                                primary=primary_model(preds))
        print(f"wrote {made}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
