"""The short table at the end of scripts/gpu_sweep.sh, and issue 11's latency targets checked against it.

    python3 scripts/sweep_summary.py RESULTS.jsonl [...]

One line per decode setting (shape, TP, P2P, batch, cache, all-reduce kind): baseline, SPD on every block, the no-comm
floor, the saving, the communication share, both efficiencies (spd_ref.latency.commcost), and the peer
baseline (transformers tp_plan) where measured; then prefill; then the targets.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere, no install needed

from spd_ref.latency.commcost import fit_rows, load_rows, print_section, saving_table  # noqa: E402



def compact(rows: list[dict]) -> list[dict]:
    """One line per decode setting of spd_ref and all-reduce kind, with SPD at ratio 1 and the peer beside
    the NCCL baseline."""
    table = saving_table(rows)
    peers = {(t["shape"], t["tp"], t["p2p"], t["batch"], t["ctx"]): t["ms"] for t in table
             if t["impl"] != "spd_ref" and t["spd_ratio"] == 0}
    peers_compiled = {(t["shape"], t["tp"], t["p2p"], t["batch"], t["ctx"]): t["ms"] for t in table
                      if t["impl"] != "spd_ref" and t["spd_ratio"] == 0 and t["compiled"]}
    out, base = [], {}
    for t in table:
        if t["impl"] != "spd_ref":
            continue
        setting = (t["shape"], t["tp"], t["p2p"], t["batch"], t["ctx"])
        key = setting + (t["compute"], t["allreduce"])
        if t["spd_ratio"] == 0:
            base[key] = t["ms"]
        if t["spd_ratio"] == 1 or (t["tp"] == 1 and t["spd_ratio"] == 0):
            nccl = t["allreduce"] == "nccl"
            out.append(dict(shape=t["shape"], tp=t["tp"], p2p=t["p2p"] if t["tp"] > 1 else None, batch=t["batch"],
                            ctx=t["ctx"], allreduce=t["allreduce"] if t["tp"] > 1 else None, compiled=t["compiled"],
                            compute=t["compute"],
                            base=base.get(key), spd100=t["ms"] if t["tp"] > 1 else None, floor=t["floor_ms"],
                            saving=t["saving"] if t["tp"] > 1 else None, comm_share=t["comm_share"],
                            eff_ar=t["eff_ar"], eff_floor=t["eff_floor"],
                            consistent=t["consistent"] if t["tp"] > 1 else None,
                            peer=peers_compiled.get(setting, peers.get(setting)) if nccl else None))
    return out


def _line(lines: list[dict], **where) -> dict | None:
    """The 7B cache-512 compiled line matching `where`; of several compute settings, the fastest baseline."""
    hits = [ln for ln in lines if ln["shape"] == "llama2-7b" and ln["ctx"] == 512 and ln["compiled"]
            and "shard" not in ln["compute"] and all(ln[k] == v for k, v in where.items())]
    return min(hits, key=lambda ln: ln["base"] or float("inf")) if hits else None


def _under(a: dict | None, a_col: str, b: dict | None, b_col: str) -> float | None:
    """How far a's value is under b's, as a share of b's (None when either is missing)."""
    return 1 - a[a_col] / b[b_col] if a and b and a[a_col] is not None and b[b_col] else None


def targets(lines: list[dict]) -> list[tuple[str, float | None, bool]]:
    """Issue 11's targets (7B, cache 512, compiled + CUDA graph, 2 x H200 NVLink): (text, value, passed)."""
    tp1 = _line(lines, tp=1, batch=1)
    nccl, one = (_line(lines, tp=2, p2p=True, batch=1, allreduce=k) for k in ("nccl", "oneshot"))
    nccl16, one16 = (_line(lines, tp=2, p2p=True, batch=16, allreduce=k) for k in ("nccl", "oneshot"))
    out = [("TP 2 NCCL baseline <= 3.45 ms/token", nccl and nccl["base"], lambda v: v <= 3.45),
           ("TP 1 baseline <= 4.25 ms/token", tp1 and tp1["base"], lambda v: v <= 4.25),
           ("TP 2 one-shot baseline <= 3.00 ms/token", one and one["base"], lambda v: v <= 3.00),
           ("TP 2 one-shot + SPD 100% <= 2.80 ms/token", one and one["spd100"], lambda v: v <= 2.80),
           ("one-shot + SPD 100% >= 18% under the NCCL baseline", _under(one, "spd100", nccl, "base"),
            lambda v: v >= 0.18),
           ("one-shot + SPD 100% >= 33% under TP 1", _under(one, "spd100", tp1, "base"), lambda v: v >= 0.33),
           ("batch 16: one-shot + SPD 100% >= 15% under the NCCL baseline",
            _under(one16, "spd100", nccl16, "base"), lambda v: v >= 0.15),
           ("peer (transformers tp_plan) >= 10% slower than our NCCL baseline",
            nccl and nccl["peer"] and nccl["peer"] / nccl["base"] - 1, lambda v: v >= 0.10)]
    for ln in lines:
        if ln["tp"] > 1 and ln["shape"] == "llama2-7b":
            where = f"{ln['allreduce']} p2p {'on' if ln['p2p'] else 'off'} batch {ln['batch']} cache {ln['ctx']}"
            out.append((f"SPD 100% eff_floor in 0.8..1.2 ({where})", ln["eff_floor"], lambda v: 0.8 <= v <= 1.2))
    return [(text, value, value is not None and ok(value)) for text, value, ok in out]


def prefill_lines(rows: list[dict]) -> list[dict]:
    by = {}
    for r in rows:
        if r.get("kind") != "prefill":
            continue
        key = (r["shape"], r["tp"], r["p2p"], r["batch"], r["prompt_len"])
        slot = "floor" if r["no_comm"] else ("spd100" if r["spd_ratio"] == 1 else "base" if r["spd_ratio"] == 0 else None)
        if slot:
            by.setdefault(key, {})[slot] = r["ms_median"]
    out = []
    for (shape, tp, p2p, batch, plen), v in sorted(by.items(), key=lambda kv: tuple(map(str, kv[0]))):
        saving = (v["base"] - v["spd100"]) / v["base"] if "base" in v and "spd100" in v else None
        out.append(dict(shape=shape, tp=tp, p2p=p2p if tp > 1 else None, batch=batch, prompt=plen,
                        base=v.get("base"), spd100=v.get("spd100"), floor=v.get("floor"), saving=saving))
    return out


def check_targets(lines: list[dict]) -> list[str]:
    out = []
    for text, value, passed in targets(lines):
        verdict = "not measured" if value is None else ("PASS" if passed else "MISS")
        share = "under" in text or "slower" in text  # targets on a relative difference
        shown = "-" if value is None else (f"{value:.1%}" if share else f"{value:.3f}")
        out.append(f"  [{verdict:>12}] {text}: {shown}")
    return out


def best_floor(rows: list[dict]) -> str:
    """`ATTENTION COMPILE_MODE TUNING` of the fastest one-GPU shard floor at batch 1 (gpu_sweep.sh h2d and
    h2e pick with it): TUNING is 1/0 for TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 given by environment."""
    floors = [r for r in rows if r.get("kind") == "decode" and r.get("shard_proxy") and r["batch"] == 1]
    if not floors:
        raise SystemExit("sweep_summary --best-floor: no shard-floor rows at batch 1")
    best = min(floors, key=lambda r: r["ms_median"])
    tuned = (best.get("inductor") or {}).get("TORCHINDUCTOR_COORDINATE_DESCENT_TUNING") == "1"
    return f"{best.get('attention') or 'sdpa'} {best['compile_mode']} {int(tuned)}"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--best-floor"]:
        print(best_floor(load_rows(argv[1:])))
        return 0
    rows = load_rows(argv)
    if not rows:
        print("sweep_summary: no rows")
        return 1
    print_section("all-reduce alpha-beta fits (commcost):",
                  [dict(tp=k[0], p2p=k[1], alpha_us=m.alpha_ms * 1e3, busbw_gbps=m.busbw_gbps)
                   for k, m in fit_rows(rows).items()],
                  [("tp", ""), ("p2p", ""), ("alpha_us", ".1f"), ("busbw_gbps", ".1f")])
    print_section("\nprefill ms (eager blocks in a CUDA graph):", prefill_lines(rows),
                  [("shape", ""), ("tp", ""), ("p2p", ""), ("batch", ""), ("prompt", ""), ("base", ".2f"),
                   ("spd100", ".2f"), ("floor", ".2f"), ("saving", ".1%")])
    lines = compact(rows)
    print_section("\ndecode ms/token, ctx as measured (median); eff_ar: vs microbenchmark all-reduces, "
                  "eff_floor: vs (baseline - floor) share:", lines,
                  [("shape", ""), ("tp", ""), ("p2p", ""), ("batch", ""), ("ctx", ""), ("compute", ""),
                   ("allreduce", ""), ("base", ".3f"), ("spd100", ".3f"), ("floor", ".3f"), ("saving", ".1%"),
                   ("comm_share", ".0%"), ("eff_ar", ".2f"), ("eff_floor", ".2f"), ("consistent", ""), ("peer", ".3f")])
    if lines:
        print("\ntargets (issue 11: 7B, cache 512, compiled + CUDA graph, 2 x H200 NVLink):")
        print("\n".join(check_targets(lines)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
