"""Recovery in calibrate (issue 12): sequential B2B inputs, and apply_plan on a model that already
carries a plan (tiny random models, fast)."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import random_model, tiny_config
from spd_ref.block import BlockMode
from spd_ref.calibration.calibrate import calibrate
from spd_ref.calibration.recover import recover_blocks
from spd_ref.calibration.distill import block_mse
from spd_ref.calibration.sensitivity import capture_block_inputs
from spd_ref.hf import apply_tp, decoder_layers, remove_tp
from spd_ref.plan import apply_plan


def _tokens(n: int = 4, seq: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, seq), generator=torch.Generator().manual_seed(seed))


def test_sequential_b2b_trains_on_the_recovered_blocks_outputs():
    model = apply_tp(random_model(tiny_config(heads=4, kv_heads=2)), 2)
    cache = capture_block_inputs(model, _tokens(), progress=False)
    strategies = {0: "b2b", 2: "b2b"}
    independent, _ = recover_blocks(model, cache, strategies, lr=1e-3, epochs=2, progress=False)
    weights, records = recover_blocks(model, cache, strategies, sequential=True, lr=1e-3, epochs=2, progress=False)
    # Block 0 sees the same inputs either way: the same training.
    assert all(torch.equal(weights[k], independent[k]) for k in weights if k.startswith("model.layers.0."))
    # Block 2's inputs: recovered block 0 (SPD) then block 1 (TP); its targets: TP block 2 on those.
    planned = copy.deepcopy(model)
    planned.load_state_dict({**planned.state_dict(), **weights}, strict=True)
    layers = decoder_layers(planned)
    layers[0].block_mode = BlockMode.SPD
    with torch.no_grad():
        h = layers[1](layers[0](cache.hidden[0], **cache.kwargs), **cache.kwargs)
        target = decoder_layers(model)[2](h, **cache.kwargs)
    spd2 = copy.deepcopy(decoder_layers(model)[2])
    spd2.block_mode = BlockMode.SPD
    assert records[2][1]["mse_before"] == pytest.approx(block_mse(spd2, h, target, cache.kwargs), rel=1e-5)
    assert not torch.allclose(h, cache.hidden[2])  # they differ from the TP model's inputs


def test_apply_plan_on_a_planned_model_resets_the_earlier_plan():
    model = random_model(tiny_config(heads=4, kv_heads=2))
    original = copy.deepcopy(model)
    common = dict(tokens=_tokens(), tau1=-2.0, tau2=-1.0, epochs=1, progress=False, lr=1e-2)
    first = calibrate(model, None, 2, 0.67, **common)   # blocks recovered with HG + B2B
    second = calibrate(model, None, 2, 0.34, **common)
    assert set(first.spd_blocks) - set(second.spd_blocks)  # first touches a block second does not
    twice = apply_plan(apply_plan(copy.deepcopy(original), first), second)
    once = apply_plan(copy.deepcopy(original), second)
    for (name, a), b in zip(twice.state_dict().items(), once.state_dict().values()):
        assert torch.equal(a, b), name
    remove_tp(twice)
    back = apply_plan(twice, first)  # and back again: the first plan exactly
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(),
                                                  apply_plan(copy.deepcopy(original), first).state_dict().values()))


def test_hg_before_b2b_never_raises_the_heldout_error():
    from spd_ref.calibration.recover import recover_layer

    for seed in range(4):
        model = apply_tp(random_model(tiny_config(heads=4, kv_heads=2, layers=2), seed), 4)
        cache = capture_block_inputs(model, _tokens(8, 16, seed), progress=False)
        for l in range(2):
            x, y = cache.hidden[l], cache.hidden[l + 1]
            spd = copy.deepcopy(decoder_layers(model)[l])
            spd.block_mode = BlockMode.SPD
            before = block_mse(spd, x[6:], y[6:], cache.kwargs)  # the 2 windows B2B holds out
            layer, hg, b2b = recover_layer(decoder_layers(model)[l], x, y, cache.kwargs, "hg+b2b", epochs=0,
                                           progress=False)
            assert block_mse(layer, x[6:], y[6:], cache.kwargs) <= before * (1 + 1e-6)
            assert hg["kept"] or hg["mse_after_hg"] == pytest.approx(hg["mse_zero_shot"])


def test_calibrate_records_the_scan_noise_and_takes_one_window():
    model = random_model(tiny_config(heads=4, kv_heads=2))
    plan = calibrate(model, None, 2, 0.34, tokens=_tokens(4), b2b=False, hg=False, progress=False)
    noise = plan.settings["scan_noise"]
    assert len(noise["low"]) == 3 and all(lo <= hi for lo, hi in zip(noise["low"], noise["high"]))
    single = calibrate(model, None, 2, 0.34, tokens=_tokens(1), b2b=False, hg=False, progress=False)
    assert single.settings["scan_noise"] is None  # one window cannot be resampled


def test_recovery_can_train_on_more_windows_than_the_scan(monkeypatch):
    """recover_samples: the scan reads the first `samples` windows (the same scan as with recovery on
    those alone), B2B trains on all of them; fewer than the scan's, or given tokens besides, is refused."""
    import spd_ref.calibration.data as data

    pool = _tokens(8)
    monkeypatch.setattr(data, "calibration_tokens", lambda tok, n, seq, seed, source: pool[:n])
    model = random_model(tiny_config(heads=4, kv_heads=2))
    common = dict(samples=4, seq_len=16, tau1=-2.0, tau2=-1.0, epochs=1, hg=False, progress=False, lr=1e-2)
    few = calibrate(model, None, 2, 0.67, recover_samples=4, **common)
    more = calibrate(model, None, 2, 0.67, **common)  # the default: RECOVER_SAMPLES (32), all 8 of the pool here
    assert [r.sensitivity for r in more.blocks] == [r.sensitivity for r in few.blocks]
    assert more.settings["samples"] == 4 and more.settings["recover_samples"] == 8
    trained = [r.b2b for r in more.blocks if r.b2b]
    assert trained and all(b["heldout_windows"] == 2 for b in trained)  # 25% of 8 windows, not of 4
    assert all(r.b2b["heldout_windows"] == 1 for r in few.blocks if r.b2b)
    with pytest.raises(ValueError, match="recover_samples=2 is below samples=4"):
        calibrate(model, None, 2, 0.67, recover_samples=2, **common)
    with pytest.raises(ValueError, match="tokens were given"):
        calibrate(model, None, 2, 0.67, tokens=pool, recover_samples=8, progress=False)
