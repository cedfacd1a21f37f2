"""spd_ref.latency.commcost: the alpha-beta fit recovers known parameters; predictions and efficiencies add up."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spd_ref.latency import commcost as C

SIZES = [2 ** k for k in range(13, 27)]  # 8 KiB .. 64 MiB, as bench measures


def _synthetic(alpha_us: float, busbw: float, tp: int, noise: float = 0.0, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    beta = 2 * (tp - 1) / tp / (busbw * 1e6)  # ms per byte
    return [(alpha_us * 1e-3 + beta * b) * (1 + noise * rng.standard_normal()) for b in SIZES]


def test_fit_recovers_known_alpha_beta_exactly() -> None:
    fit = C.fit_alpha_beta(SIZES, _synthetic(22.0, 300.0, tp=4), tp=4)
    assert fit.alpha_ms * 1e3 == pytest.approx(22.0, rel=1e-9)
    assert fit.busbw_gbps == pytest.approx(300.0, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_known_alpha_beta_under_noise(seed: int) -> None:
    # 3% multiplicative noise per point: alpha within 10%, bandwidth within 5%.
    fit = C.fit_alpha_beta(SIZES, _synthetic(30.0, 40.0, tp=2, noise=0.03, seed=seed), tp=2)
    assert fit.alpha_ms * 1e3 == pytest.approx(30.0, rel=0.10)
    assert fit.busbw_gbps == pytest.approx(40.0, rel=0.05)


def test_fit_keeps_alpha_and_beta_non_negative() -> None:
    # Times that fall with size would need beta < 0: the fit clamps it to 0 (alpha = the level).
    fit = C.fit_alpha_beta([1e3, 1e4, 1e5], [3.0, 2.0, 1.0])
    assert fit.alpha_ms > 0 and fit.beta_ms_per_byte == 0
    fit = C.fit_alpha_beta([1e3, 1e6], [0.001, 1.0])  # a line through (almost) the origin
    assert fit.alpha_ms >= 0 and fit.beta_ms_per_byte > 0
    with pytest.raises(ValueError, match="2 or more message sizes"):
        C.fit_alpha_beta([4096, 4096], [0.1, 0.1])


def test_ring_model_recovers_step_latency_and_bandwidth_across_n() -> None:
    step_ms, busbw = 0.004, 150.0
    pts = [(n, b, C.ring_model(step_ms, busbw, n).time_ms(b)) for n in (2, 4, 8) for b in SIZES]
    got_step, got_bw = C.fit_ring(pts)
    assert got_step == pytest.approx(step_ms, rel=1e-6) and got_bw == pytest.approx(busbw, rel=1e-6)
    assert C.ring_model(step_ms, busbw, 4).alpha_ms == pytest.approx(6 * step_ms)


def test_predict_decode_and_what_if_bandwidth() -> None:
    model = C.AlphaBeta(alpha_ms=0.02, beta_ms_per_byte=0.0, tp=4)
    base, spd = C.predict_decode(2.0, layers=32, spd_blocks=32, model=model, batch=1, hidden=4096)
    assert base == pytest.approx(2.0 + 64 * 0.02) and spd == pytest.approx(2.0 + 32 * 0.02)
    slow = C.AlphaBeta(0.02, 0.0, 4).with_busbw(10.0)
    assert slow.busbw_gbps == pytest.approx(10.0)
    assert slow.time_ms(8192) == pytest.approx(0.02 + 1.5 * 8192 / 10e6)
    with pytest.raises(ValueError, match="spd_blocks=33"):
        C.predict_decode(2.0, 32, 33, model, 1, 4096)


def _decode_row(ratio, syncs, ms, no_comm=False, **kw) -> dict:
    row = dict(kind="decode", impl="spd_ref", shape="s", layers=4, hidden=4096, tp=4, p2p=True, batch=1, ctx=512,
               compiled=True, spd_ratio=ratio, no_comm=no_comm, sync_points_per_token=syncs, sync_bytes=8192,
               ms_median=ms, ms_p90=ms * 1.1)
    row.update(kw)
    return row


def test_efficiency_is_one_when_spd_saves_exactly_its_all_reduces() -> None:
    t_ar = 0.025  # each all-reduce of 8 KiB costs 25 us
    ar = [dict(kind="allreduce", tp=4, p2p=True, bytes=b, ms_median=t_ar) for b in (4096, 16384)]
    rows = ar + [_decode_row(0.0, 8, 1.0 + 8 * t_ar), _decode_row(1.0, 4, 1.0 + 4 * t_ar),
                 _decode_row(None, 0, 1.0, no_comm=True)]
    table = {t["spd_ratio"]: t for t in C.saving_table(rows)}
    full = table[1.0]
    assert full["eff_ar"] == pytest.approx(1.0) and full["eff_floor"] == pytest.approx(1.0)
    assert full["saving"] == pytest.approx(4 * t_ar / 1.2) and full["comm_share"] == pytest.approx(0.2 / 1.2)
    preds = C.prediction_table(rows, C.fit_rows(rows))
    assert max(abs(p["rel_err"]) for p in preds) < 1e-6


def test_kinds_get_their_own_groups_and_a_flagged_group_gets_no_efficiency() -> None:
    t_ar, t_one = 0.025, 0.010
    ar = [dict(kind="allreduce", tp=4, p2p=True, bytes=b, ms_median=t_ar) for b in (4096, 16384)]
    ar += [dict(kind="allreduce", allreduce="oneshot", tp=4, p2p=True, bytes=b, ms_median=t_one) for b in (4096, 16384)]
    rows = ar + [_decode_row(None, 0, 1.0, no_comm=True, consistent=None),  # one floor serves both kinds
                 _decode_row(0.0, 8, 1.0 + 8 * t_ar, allreduce="nccl", consistent=True),
                 _decode_row(1.0, 4, 1.0 + 4 * t_ar, allreduce="nccl", consistent=True),
                 _decode_row(0.0, 8, 1.0 + 8 * t_one, allreduce="oneshot", consistent=True),
                 _decode_row(1.0, 4, 1.2, allreduce="oneshot", consistent=False)]  # SPD slower than its baseline
    table = {(t["allreduce"], t["spd_ratio"]): t for t in C.saving_table(rows)}
    nccl, one = table[("nccl", 1.0)], table[("oneshot", 1.0)]
    assert nccl["floor_ms"] == one["floor_ms"] == 1.0
    assert nccl["eff_ar"] == pytest.approx(1.0) and nccl["consistent"] is True  # fitted on NCCL's rows only
    assert one["eff_ar"] is None and one["eff_floor"] is None and one["consistent"] is False
    assert table[("oneshot", 0.0)]["comm_share"] == pytest.approx(8 * t_one / (1.0 + 8 * t_one))
    assert C.saving_table(rows[:4] + [_decode_row(0.0, 8, 1.2)])[0]["consistent"] is None  # never checked


def test_report_runs_on_rows(capsys, tmp_path) -> None:
    ar = [dict(kind="allreduce", tp=4, p2p=True, bytes=b, ms_median=t)
          for b, t in zip(SIZES, _synthetic(20.0, 300.0, tp=4))]
    rows = ar + [_decode_row(0.0, 8, 1.2), _decode_row(1.0, 4, 1.1), _decode_row(None, 0, 1.0, no_comm=True)]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert C.cli(["--results", str(path), "--what-if", "8:on,4:on:10"]) == 0
    text = capsys.readouterr().out
    assert "alpha" in text and "eff_ar" in text and "what-if" in text
    with pytest.raises(ValueError, match="TP:on"):
        C.parse_what_if("8:maybe")


@pytest.mark.slow
def test_fit_on_real_gloo_measurements_is_positive_and_monotone(tmp_path) -> None:
    from spd_ref.launch import launch

    out = tmp_path / "ar.jsonl"
    done = launch(2, ["bench", "--ar-bench", "--ar-sizes", "4K,64K,1M,8M", "--ar-repeats", "5",
                      "--ar-per-graph", "4", "--warmup", "1", "--dtype", "fp32", "--out", str(out)],
                  cpu=True, timeout_s=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = C.load_rows([str(out)])
    fit = C.fit_rows(rows)[(2, True)]
    assert fit.alpha_ms >= 0 and fit.beta_ms_per_byte > 0 and math.isfinite(fit.busbw_gbps)
    small, large = fit.time_ms(4096), fit.time_ms(8 << 20)
    assert large > small > 0
    measured = {r["bytes"]: r["ms_median"] for r in rows}
    assert measured[8 << 20] > measured[4096]  # 2000x the bytes takes longer, even on 2 busy cores
