"""Perplexity, the back-to-front scan (METHOD.md s.3), classes and block choice.

The scan and the selection comparison run on SmolLM2 at N = 4 with short windows, to keep CPU time
small; the class and choice rules are checked on hand-made scores.
"""
from __future__ import annotations

import pytest
import torch

from spd_ref.calibration.data import calibration_tokens, heldout_tokens
from spd_ref.hf import apply_tp, decoder_layers, remove_tp, set_spd_blocks
from spd_ref.calibration.sensitivity import (BlockClass, SensitivityScan, baseline_blocks, capture_block_inputs, classify, perplexity, sensitivity_scan)
from spd_ref.plan import choose_blocks, num_spd_blocks

TP = 4
RATIOS = (0.3, 0.5)


@pytest.fixture(scope="module")
def scanned(smollm2):
    """SmolLM2 under 4-way simulated TP, its calibration cache, scan, and held-out windows."""
    model, tok = smollm2
    apply_tp(model, TP)
    calls = []
    hooks = [layer.register_forward_pre_hook(lambda *_: calls.append(1)) for layer in decoder_layers(model)]
    cache = capture_block_inputs(model, calibration_tokens(tok, 4, 128, seed=0), batch_size=4, progress=False)
    calls.clear()
    scan = sensitivity_scan(model, cache, progress=False)
    block_calls = len(calls)
    for h in hooks:
        h.remove()
    yield model, cache, scan, block_calls, heldout_tokens(tok, 256, 4)
    remove_tp(model)


def test_tp_perplexity_equals_plain_model(smollm2, scanned):
    model, _, _, _, held = scanned
    tp_ppl = perplexity(model, held)
    remove_tp(model)
    try:
        plain_ppl = perplexity(model, held)
    finally:
        apply_tp(model, TP)
    assert tp_ppl == pytest.approx(plain_ppl, rel=1e-4)
    assert 8.0 < plain_ppl < 40.0  # SmolLM2-135M reads Wikipedia at about 16-23


def test_scan_reuses_cached_prefix(scanned):
    model, cache, scan, block_calls, _ = scanned
    num = len(decoder_layers(model))
    # Block l..L-1 per step, one batch: L(L+1)/2 block calls, not L^2 (plus L for the TP baseline: none).
    assert block_calls == num * (num + 1) // 2
    # A cached suffix gives the same perplexity as a full forward pass with SPD on l..L-1.
    l = num - 3
    set_spd_blocks(model, range(l, num))
    try:
        full = perplexity(model, cache.tokens)
    finally:
        set_spd_blocks(model, [])
    assert scan.suffix_ppl[l] == pytest.approx(full, rel=1e-4)
    assert scan.scores[l] == pytest.approx(scan.suffix_ppl[l] - scan.suffix_ppl[l + 1])
    assert scan.suffix_ppl[num] == pytest.approx(scan.base_ppl)


def test_scan_finds_smollm2_sensitive_blocks(scanned):
    _, _, scan, _, _ = scanned
    rel = scan.relative
    # SPD on every block of a 135M model at N = 4 is ruinous (small models are sensitive, METHOD s.3),
    assert scan.suffix_ppl[0] > 3 * scan.base_ppl
    # and the first block carries the most of it.
    assert max(range(len(rel)), key=rel.__getitem__) == 0 and rel[0] > 1.0
    assert sorted(rel)[len(rel) // 2] < 0.05  # the median block adds under 5%


def test_sensitivity_order_beats_other_selections(scanned):
    model, _, scan, _, held = scanned
    num = len(scan.scores)
    results = {}
    for ratio in RATIOS:
        picks = {"sensitivity": choose_blocks(scan.scores, ratio),
                 "first": baseline_blocks("first", num, ratio), "last": baseline_blocks("last", num, ratio),
                 "random0": baseline_blocks("random", num, ratio, seed=0),
                 "random1": baseline_blocks("random", num, ratio, seed=1)}
        for name, blocks in picks.items():
            assert len(blocks) == num_spd_blocks(ratio, num)
            set_spd_blocks(model, blocks)
            results[ratio, name] = perplexity(model, held)
        set_spd_blocks(model, [])
    print({f"{r}/{n}": round(p, 3) for (r, n), p in results.items()})
    for ratio in RATIOS:
        best = results[ratio, "sensitivity"]
        others = [p for (r, n), p in results.items() if r == ratio and n != "sensitivity"]
        assert best < min(others), (ratio, results)


def test_classes_follow_relative_thresholds():
    scan = SensitivityScan(20.0, [0.0] * 6, [0.05, 0.1, 0.2, 0.9, 1.0, 1.5])  # 0.25%, 0.5%, 1%, 4.5%, 5%, 7.5%
    classes = classify(scan, tau1=0.005, tau2=0.05)
    assert classes == [BlockClass.INSENSITIVE, BlockClass.INSENSITIVE, BlockClass.SENSITIVE,
                       BlockClass.SENSITIVE, BlockClass.SENSITIVE, BlockClass.EXTREME]
    with pytest.raises(ValueError, match="tau1=0.1, tau2=0.05"):
        classify(scan, tau1=0.1, tau2=0.05)


def test_choice_takes_least_sensitive_blocks():
    scores = [5.0, 0.1, 3.0, -0.2, 0.1, 9.0]
    assert choose_blocks(scores, 0.5) == [1, 3, 4]
    assert choose_blocks(scores, 0.0) == [] and choose_blocks(scores, 1.0) == list(range(6))
    assert num_spd_blocks(0.25, 10) == 3  # 2.5 rounds up, not to even
    assert num_spd_blocks(0.5, 30) == 15
    with pytest.raises(ValueError, match="ratio=1.5"):
        choose_blocks(scores, 1.5)
    with pytest.raises(ValueError, match="kind='middle'"):
        baseline_blocks("middle", 6, 0.5)


def test_bad_tokens_are_rejected(scanned):
    model = scanned[0]
    with pytest.raises(ValueError, match="LongTensor"):
        perplexity(model, torch.zeros(2, 8))
    with pytest.raises(ValueError, match="batch_size=0"):
        perplexity(model, torch.zeros(2, 8, dtype=torch.long), batch_size=0)


def _tiny_scan(windows: int, seed: int = 0):
    from conftest import random_model, tiny_config

    model = apply_tp(random_model(tiny_config(heads=4, kv_heads=2, layers=3), seed), 2)
    tokens = torch.randint(0, 256, (windows, 24), generator=torch.Generator().manual_seed(seed))
    return sensitivity_scan(model, capture_block_inputs(model, tokens, batch_size=8, progress=False),
                            progress=False)


def test_scan_interval_shrinks_with_more_data():
    from spd_ref.calibration.noise import relative_draws, scan_intervals

    few, many = _tiny_scan(4), _tiny_scan(64)
    assert len(few.window_nll) == 4 and len(few.window_nll[0]) == 4 and few.tokens_per_window == 23
    # The per-window NLLs reproduce the scan's perplexities exactly.
    for l, nll in enumerate(many.window_nll):
        assert many.suffix_ppl[l] == pytest.approx(float(torch.tensor(nll, dtype=torch.float64).mean().div(23).exp()), rel=1e-12)
    width_few, width_many = scan_intervals(few).median_half_width(), scan_intervals(many).median_half_width()
    print(f"median half-width of s_l / PPL: 4 windows {width_few:.4%}, 64 windows {width_many:.4%}")
    assert width_many < 0.5 * width_few  # ~1/sqrt(16) = 0.25 expected
    intervals = scan_intervals(many)
    inside = sum(lo <= r <= hi for lo, hi, r in zip(intervals.low, intervals.high, many.relative))
    assert inside == len(many.relative)  # the point estimate lies in its own bootstrap interval
    assert relative_draws(many, draws=7).shape == (7, 3)


def test_bf16_and_disk_caches_give_the_same_scan(tmp_path):
    from conftest import random_model, tiny_config

    model = apply_tp(random_model(tiny_config(heads=4, kv_heads=2, layers=3)), 2)
    tokens = torch.randint(0, 256, (6, 24), generator=torch.Generator().manual_seed(0))
    memory = capture_block_inputs(model, tokens, batch_size=4, progress=False)
    disk = capture_block_inputs(model, tokens, batch_size=4, progress=False, offload=tmp_path)
    half = capture_block_inputs(model, tokens, batch_size=4, progress=False, dtype=torch.bfloat16, offload=tmp_path / "h")
    assert len(list(tmp_path.glob("hidden_*.bin"))) == 4 and half.hidden[1].dtype == torch.bfloat16
    assert half.block(1).dtype == torch.float32  # batches come back in the model's dtype
    assert sum(t.nbytes for t in half.hidden) * 2 == sum(t.nbytes for t in memory.hidden)
    scans = [sensitivity_scan(model, c, progress=False) for c in (memory, disk, half)]
    assert scans[1].suffix_ppl == scans[0].suffix_ppl  # the same numbers, stored elsewhere
    assert scans[2].suffix_ppl == pytest.approx(scans[0].suffix_ppl, rel=1e-3)  # bf16 rounding only
