"""The measured decode table of a set of sweeps (markdown), which rows are current, and how well
the commcost model explains them.

    python -m spd_ref.latency.report results/h100/*.jsonl [--figure results/h100/decode_vs_ratio.png]

Which rows count (`current_rows`): sweeps append, and a setting (kind, impl, shape, TP, P2P, batch,
ctx/prompt, compiled) may be measured by several runs. Per setting the run with the most rows wins
(a full ratio sweep beats a spot check such as the peer call's three rows), then the latest. All-reduce
microbenchmarks do not depend on the model code and are all kept.

Code versions: the runs tagged in `PRE_FUSION_TAGS` were measured before commit b2b1748 (fused q/k/v
and gate/up matmuls), which made decode faster by a fixed time per block; their rows are labelled
"pre-fusion" and only the settings no later run measured stay current. `fusion_delta` measures the
per-block saving on settings measured both before and after (no-comm floors and TP 1 baselines).
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Iterable, Optional, Sequence

import numpy as np

from spd_ref.__main__ import CommandParser, existing_glob, output_file
from spd_ref.latency.commcost import (allreduce_kind, decode_groups, fit_rows, load_rows, prediction_table,
                                     saving_table)

PRE_FUSION_TAGS = ("sweep-a",)
FUSION_COMMIT = "b2b1748"
TABLE_RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)


def code_version(row: dict) -> str:
    return "pre-fusion" if row.get("tag") in PRE_FUSION_TAGS else "post-fusion"


def _setting(r: dict) -> tuple:
    # A floor has no all-reduce kind: it is its own setting beside each kind's rows.
    kind = "floor" if r.get("no_comm") else allreduce_kind(r)
    return (r["kind"], r.get("impl") or "spd_ref", r.get("shape"), r.get("layers"), r["tp"], r["p2p"],
            r.get("batch"), r.get("ctx"), r.get("prompt_len"), r.get("compiled"), kind)


EXPERIMENT_TAGS = ("tune-", "attn", "head")  # experiments (gpu_sweep.sh tune, head; attn): reported apart


def current_rows(rows: Iterable[dict]) -> list[dict]:
    """All all-reduce rows, and per decode/prefill setting the rows of one run (most rows, then latest)."""
    runs: dict[tuple, dict[tuple, list]] = defaultdict(lambda: defaultdict(list))
    out = []
    for r in rows:
        if (r.get("tag") or "").startswith(EXPERIMENT_TAGS) or r.get("shard_proxy"):
            continue  # experiments, and one-GPU shard floors (not a TP run), are reported apart
        if r.get("kind") == "allreduce":
            out.append(r)
        else:
            runs[_setting(r)][(r.get("tag"), r.get("date"))].append(r)
    for by_run in runs.values():
        best = max(by_run.items(), key=lambda kv: (len(kv[1]), kv[0][1] or ""))
        out.extend(best[1])
    return out


def floor_of(g: dict) -> Optional[dict]:
    """The compute-only row of a decode group: the no-comm floor, or at TP 1 the baseline itself."""
    if g["floor"] is not None:
        return g["floor"]
    return g["base"] if g["base"] is not None and g["base"]["tp"] == 1 else None


def fusion_delta(rows: Iterable[dict], tps: Optional[Sequence[int]] = None) -> tuple[float, list[dict]]:
    """(ms saved per block by the fusion, the pairs behind it): floors (TP 1: baselines) of one
    setting measured both pre- and post-fusion, (pre - post) / layers, averaged; `tps` restricts."""
    by: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.get("kind") != "decode" or (r.get("impl") or "spd_ref") != "spd_ref":
            continue
        if not (r.get("no_comm") or (r["tp"] == 1 and not r.get("spd_ratio"))):
            continue
        if tps is not None and r["tp"] not in tps:
            continue
        by[(r["shape"], r["layers"], r["tp"], r["p2p"], r["batch"])][code_version(r)] = r["ms_median"]
    pairs = [dict(shape=k[0], tp=k[2], p2p=k[3], batch=k[4], pre=v["pre-fusion"], post=v["post-fusion"],
                  per_layer_ms=(v["pre-fusion"] - v["post-fusion"]) / k[1])
             for k, v in sorted(by.items(), key=lambda kv: tuple(map(str, kv[0])))
             if len(v) == 2]
    if not pairs:
        raise ValueError("no setting was measured both before and after the fusion: cannot measure its saving")
    return statistics.mean(p["per_layer_ms"] for p in pairs), pairs


def _call(r: dict) -> str:
    """The sweep phase a row came from: its tag, without the "sweep-" that peer steps put before it."""
    return (r.get("tag") or "").removeprefix("sweep-")


def peer_ratios(rows: Iterable[dict]) -> list[dict]:
    """transformers tp_plan decode ms over ours (NCCL baseline, ratio 0) measured in the same call."""
    rows = list(rows)
    ours = {(_call(r), r["shape"], r["tp"], r["p2p"], r["batch"]): r["ms_median"] for r in rows
            if r.get("kind") == "decode" and (r.get("impl") or "spd_ref") == "spd_ref"
            and r.get("spd_ratio") == 0 and not r.get("no_comm") and allreduce_kind(r) == "nccl"
            and r.get("ctx") == 512}
    out = []
    for r in rows:
        if r.get("kind") != "decode" or (r.get("impl") or "spd_ref") == "spd_ref":
            continue
        mine = ours.get((_call(r), r["shape"], r["tp"], r["p2p"], r["batch"]))
        if mine:
            out.append(dict(shape=r["shape"], tp=r["tp"], p2p=r["p2p"], batch=r["batch"], compiled=r["compiled"],
                            peer_ms=r["ms_median"], ours_ms=mine, ratio=r["ms_median"] / mine, tag=r.get("tag")))
    return out


def measured_table(rows: list[dict]) -> list[dict]:
    """One line per current spd_ref decode setting: ms at each ratio, floor, saving and efficiencies
    at 100% SPD, the compiled peer's ratio where measured (same call)."""
    cur = current_rows(rows)
    eff = {(t["shape"], t["tp"], t["p2p"], t["batch"], t["ctx"], t["allreduce"], t["spd_ratio"]): t
           for t in saving_table(cur) if t["impl"] == "spd_ref"}
    peers = {(p["shape"], p["tp"], p["p2p"], p["batch"]): p for p in peer_ratios(rows) if p["compiled"]}
    out = []
    for key, g in decode_groups(cur).items():
        impl, shape, tp, p2p, batch, ctx = key[:6]
        kind = key[-1]
        if impl != "spd_ref" or g["base"] is None:
            continue
        floor = floor_of(g)
        line = dict(shape=shape, tp=tp, p2p=p2p if tp > 1 else None, batch=batch, ctx=ctx,
                    allreduce=kind if tp > 1 else None, code=code_version(g["base"]),
                    floor=floor["ms_median"] if floor else None)
        ms = {0.0: g["base"]["ms_median"], **{k: v["ms_median"] for k, v in g["spd"].items()}}
        line.update({f"r{int(r * 100)}": ms.get(r) for r in TABLE_RATIOS})
        full = eff.get((shape, tp, p2p, batch, ctx, kind, 1.0))
        if full and tp > 1:
            line.update(saving100=full["saving"], comm_share=full["comm_share"], eff_ar=full["eff_ar"],
                        eff_floor=full["eff_floor"], consistent={True: "yes", False: "NO"}.get(full["consistent"]))
        peer = peers.get((shape, tp, p2p, batch)) if kind == "nccl" else None
        line["peer_ratio"] = peer["ratio"] if peer else None
        out.append(line)
    order = {"llama2-7b": 0, "llama2-13b": 1, "llama2-70b": 2}
    return sorted(out, key=lambda d: (order.get(d["shape"], 9), d["shape"], d["tp"], not d["p2p"], d["batch"],
                                      d["ctx"] or 0, d["allreduce"] or ""))


def cost_model_errors(rows: list[dict]) -> list[dict]:
    """commcost's prediction (floor + syncs x alpha-beta all-reduce) vs measured decode, per (tp, p2p):
    the median and max |relative error| over settings and ratios, and the mean signed error."""
    cur = current_rows(rows)
    by = defaultdict(list)
    for p in prediction_table(cur, fit_rows(cur)):
        by[(p["tp"], p["p2p"])].append(p["rel_err"])
    return [dict(tp=k[0], p2p=k[1], n=len(v), median_abs=float(np.median(np.abs(v))),
                 max_abs=float(np.max(np.abs(v))), mean=float(np.mean(v))) for k, v in sorted(by.items())]


def _cell(v, spec: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "on" if v else "off"
    return format(v, spec) if isinstance(v, float) else str(v)


def markdown(dicts: list[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table; columns are (key, header, format spec)."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(d.get(k), s) for k, _, s in columns) + " |" for d in dicts]
    return "\n".join(lines)


TABLE_COLUMNS = [("shape", "shape", ""), ("tp", "TP", ""), ("p2p", "P2P", ""), ("batch", "batch", ""),
                 ("ctx", "cache", ""), ("allreduce", "all-reduce", ""), ("code", "code", "")] + [(f"r{int(r * 100)}", f"{int(r * 100)}%", ".3f") for r in TABLE_RATIOS] + \
                [("floor", "no-comm floor", ".3f"), ("saving100", "saving at 100%", ".1%"),
                 ("comm_share", "comm share", ".0%"), ("eff_ar", "eff_ar", ".2f"), ("eff_floor", "eff_floor", ".2f"),
                 ("consistent", "consistent", ""), ("peer_ratio", "peer / ours", ".2f")]


def report(rows: list[dict]) -> str:
    parts = ["decode ms/token (median), compiled + CUDA graph; columns 0%..100% = SPD ratio:", "",
             markdown(measured_table(rows), TABLE_COLUMNS), "",
             "peer (transformers tp_plan='auto') vs ours, baseline, same call:", "",
             markdown(peer_ratios(rows), [("shape", "shape", ""), ("tp", "TP", ""), ("p2p", "P2P", ""),
                                          ("batch", "batch", ""), ("compiled", "peer compiled", ""),
                                          ("peer_ms", "peer ms", ".3f"), ("ours_ms", "ours ms", ".3f"),
                                          ("ratio", "peer / ours", ".2f")]), "",
             "commcost model (floor + syncs x alpha-beta microbenchmark fit) vs measured decode:", "",
             markdown(cost_model_errors(rows), [("tp", "TP", ""), ("p2p", "P2P", ""), ("n", "rows", ""),
                                                ("median_abs", "median abs rel err", ".1%"),
                                                ("max_abs", "max abs rel err", ".1%"),
                                                ("mean", "mean signed err", "+.1%")])]
    try:
        delta, pairs = fusion_delta(rows)
    except ValueError:  # rows from one code version: no fusion saving to report
        return "\n".join(parts)
    parts += ["", f"fusion ({FUSION_COMMIT}) saving per block: {delta * 1e3:.1f} us (mean of {len(pairs)} pairs, "
              f"{min(p['per_layer_ms'] for p in pairs) * 1e3:.1f}..{max(p['per_layer_ms'] for p in pairs) * 1e3:.1f})"]
    return "\n".join(parts)


def cli(argv: Optional[list[str]] = None) -> int:
    p = CommandParser(prog="python -m spd_ref report", description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=existing_glob, nargs="+", help="JSONL files (globs allowed)")
    p.add_argument("--figure", type=output_file, help="also write decode ms vs SPD ratio of the current rows (PNG)")
    args = p.parse_args(argv)
    rows = load_rows(args.results)
    print(report(rows))
    if args.figure:
        from spd_ref.latency.plots import plot_decode_grid

        cur = [dict(r, series_note="pre-fusion" if code_version(r) == "pre-fusion" else "")
               for r in current_rows(rows) if (r.get("impl") or "spd_ref") == "spd_ref"]
        made = plot_decode_grid(cur, args.figure, "Measured decode latency vs SPD ratio, 4 x H100 "
                                "(pre-fusion = before " + FUSION_COMMIT + ")")
        print(f"wrote {made}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
