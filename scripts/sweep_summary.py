"""The short table at the end of scripts/gpu_sweep.sh, and the latency targets checked against it.

    python3 scripts/sweep_summary.py RESULTS.jsonl [...]

One line per decode setting (shape, TP, P2P, batch): baseline, SPD on every block, the no-comm
floor, the saving, the communication share, both efficiencies (spd_ref.latency.commcost), and the peer
baseline (transformers tp_plan) where measured; then prefill; then the targets.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere, no install needed

from spd_ref.latency.commcost import fit_rows, load_rows, print_section, saving_table  # noqa: E402

# (description, check(table) -> (value, passed)); 7B, batch 1, ctx 512, compiled, H100 NVLink.
TARGETS = [
    ("7B TP 4 NVLink baseline <= 3.3 ms/token", "base", dict(tp=4, p2p=True), lambda v: v <= 3.3),
    ("7B TP 1 baseline <= 5.5 ms/token", "base", dict(tp=1), lambda v: v <= 5.5),
    ("7B TP 4 NVLink SPD 100% saving >= 17%", "saving", dict(tp=4, p2p=True), lambda v: v >= 0.17),
    ("7B TP 4 NVLink SPD 100% efficiency (eff_ar) >= 0.9", "eff_ar", dict(tp=4, p2p=True), lambda v: v >= 0.9),
    ("7B TP 4 NVLink SPD 100% efficiency (eff_floor) >= 0.9", "eff_floor", dict(tp=4, p2p=True),
     lambda v: v >= 0.9),
]


def compact(rows: list[dict]) -> list[dict]:
    """One line per decode setting of spd_ref, with SPD at ratio 1 and the peer beside it."""
    table = saving_table(rows)
    peers = {(t["shape"], t["tp"], t["p2p"], t["batch"]): t["ms"] for t in table
             if t["impl"] != "spd_ref" and t["spd_ratio"] == 0}
    peers_compiled = {(t["shape"], t["tp"], t["p2p"], t["batch"]): t["ms"] for t in table
                      if t["impl"] != "spd_ref" and t["spd_ratio"] == 0 and t["compiled"]}
    out, base = [], {}
    for t in table:
        if t["impl"] != "spd_ref":
            continue
        key = (t["shape"], t["tp"], t["p2p"], t["batch"])
        if t["spd_ratio"] == 0:
            base[key] = t["ms"]
        if t["spd_ratio"] == 1 or (t["tp"] == 1 and t["spd_ratio"] == 0):
            out.append(dict(shape=t["shape"], tp=t["tp"], p2p=t["p2p"] if t["tp"] > 1 else None, batch=t["batch"],
                            compiled=t["compiled"], base=base.get(key), spd100=t["ms"] if t["tp"] > 1 else None,
                            floor=t["floor_ms"], saving=t["saving"] if t["tp"] > 1 else None,
                            comm_share=t["comm_share"], eff_ar=t["eff_ar"], eff_floor=t["eff_floor"],
                            peer=peers_compiled.get(key, peers.get(key))))
    return out


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
    for text, column, where, ok in TARGETS:
        hits = [ln for ln in lines if ln["shape"] == "llama2-7b" and ln["batch"] == 1 and ln["compiled"]
                and all(ln[k] == v for k, v in where.items())]
        value = hits[-1][column] if hits else None
        verdict = "not measured" if value is None else ("PASS" if ok(value) else "MISS")
        shown = "-" if value is None else (f"{value:.1%}" if column == "saving" else f"{value:.3f}")
        out.append(f"  [{verdict:>12}] {text}: {shown}")
    return out


def main(argv: list[str]) -> int:
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
                  [("shape", ""), ("tp", ""), ("p2p", ""), ("batch", ""), ("compiled", ""), ("base", ".3f"),
                   ("spd100", ".3f"), ("floor", ".3f"), ("saving", ".1%"), ("comm_share", ".0%"),
                   ("eff_ar", ".2f"), ("eff_floor", ".2f"), ("peer", ".3f")])
    if lines:
        print("\ntargets (7B, batch 1, compiled + CUDA graph):")
        print("\n".join(check_targets(lines)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
