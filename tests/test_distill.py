"""B2B (METHOD.md s.4) on SmolLM2 at N = 4: distilling one sensitive block, paper defaults (AdamW,
lr 5e-5, 10 epochs), lowers its error against the original block on HELD-OUT text, and lowers the
held-out perplexity of the model with that block under SPD."""
from __future__ import annotations

import copy

import pytest
import torch

from spd_ref.block import BlockMode
from spd_ref.calibration.data import calibration_tokens, heldout_tokens
from spd_ref.calibration.distill import block_mse, distill_block
from spd_ref.hf import apply_tp, decoder_layers, remove_tp, set_spd_blocks
from spd_ref.calibration.sensitivity import capture_block_inputs, suffix_perplexity

TP = 4
BLOCK = 16  # one of SmolLM2's most sensitive middle blocks at N = 4 (about +20% PPL in the scan)


@pytest.fixture(scope="module")
def distilled(smollm2):
    model, tok = smollm2
    apply_tp(model, TP)
    calib = capture_block_inputs(model, calibration_tokens(tok, 8, 256, seed=0), progress=False)
    held = capture_block_inputs(model, heldout_tokens(tok, 256, 4), progress=False)
    layer = copy.deepcopy(decoder_layers(model)[BLOCK])
    result = distill_block(layer, calib.hidden[BLOCK], calib.hidden[BLOCK + 1], calib.kwargs, progress=False)
    yield model, calib, held, layer, result
    remove_tp(model)


def test_b2b_lowers_heldout_block_error(distilled):
    model, _, held, layer, result = distilled
    original = decoder_layers(model)[BLOCK]
    original.block_mode = BlockMode.SPD
    before = block_mse(original, held.hidden[BLOCK], held.hidden[BLOCK + 1], held.kwargs)
    original.block_mode = BlockMode.TP
    layer.block_mode = BlockMode.SPD
    after = block_mse(layer, held.hidden[BLOCK], held.hidden[BLOCK + 1], held.kwargs)
    print(f"block {BLOCK} held-out MSE: zero-shot SPD {before:.4f}, after B2B {after:.4f}; "
          f"calibration {result.mse_before:.4f} -> {result.mse_after:.4f}")
    assert after < 0.75 * before
    assert result.mse_after < 0.75 * result.mse_before
    assert len(result.loss_curve) == 10 and result.loss_curve[-1] < result.loss_curve[0]
    # The training target is the TP block: in TP mode the untouched block's error is float noise.
    assert block_mse(original, held.hidden[BLOCK], held.hidden[BLOCK + 1], held.kwargs) < 1e-8


def test_b2b_lowers_heldout_perplexity(distilled):
    model, _, held, layer, _ = distilled
    layers = decoder_layers(model)
    tp_ppl = suffix_perplexity(model, held, BLOCK)
    set_spd_blocks(model, [BLOCK])
    original = layers[BLOCK]
    try:
        zero_shot = suffix_perplexity(model, held, BLOCK)
        layers[BLOCK] = layer
        layer.block_mode = BlockMode.SPD
        recovered = suffix_perplexity(model, held, BLOCK)
    finally:
        layers[BLOCK] = original
        set_spd_blocks(model, [])
    print(f"held-out PPL: TP {tp_ppl:.3f}, SPD on block {BLOCK} zero-shot {zero_shot:.3f}, after B2B {recovered:.3f}")
    assert zero_shot > tp_ppl * 1.01  # the block is sensitive
    assert recovered < zero_shot - 0.3 * (zero_shot - tp_ppl)  # B2B recovers at least 30% of the loss


def test_b2b_rejects_bad_inputs(distilled):
    _, calib, _, layer, _ = distilled
    with pytest.raises(ValueError, match="targets"):
        distill_block(layer, calib.hidden[0], calib.hidden[0][:, :5], calib.kwargs, progress=False)
    with pytest.raises(ValueError, match="lr=0"):
        distill_block(layer, calib.hidden[0], calib.hidden[1], calib.kwargs, lr=0, progress=False)
    x = torch.zeros(1, 4, 3)
    with pytest.raises(ValueError, match="batch_size=0"):
        block_mse(layer, x, x, calib.kwargs, batch_size=0)


# --- B2B that cannot make a block worse, in any dtype (tiny random models, fast) ------------------

def _tiny_cache(dtype, seed=0, windows=8):
    from conftest import random_model, tiny_config

    config = tiny_config(heads=4, kv_heads=2, layers=2)
    config.initializer_range = 0.08  # weights of SmolLM2's magnitude: a bf16 step there is ~5e-4
    model = random_model(config, seed).to(dtype)
    apply_tp(model, 2)
    tokens = torch.randint(0, 256, (windows, 32), generator=torch.Generator().manual_seed(seed))
    return model, capture_block_inputs(model, tokens, batch_size=4, progress=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_b2b_lowers_the_error_in_fp32_and_bf16_models(dtype):
    # The paper's lr 5e-5: training the bf16 weights themselves, most steps round away (this block's
    # MSE then falls by 5% only, 0.0165 -> 0.0157); with fp32 master weights by 30%, as in fp32.
    model, cache = _tiny_cache(dtype)
    layer = copy.deepcopy(decoder_layers(model)[1])
    result = distill_block(layer, cache.hidden[1], cache.hidden[2], cache.kwargs, lr=5e-5, epochs=10, progress=False)
    assert all(p.dtype == dtype for p in layer.parameters())  # cast back to the model's dtype
    assert result.kept and result.best_epoch > 0 and result.heldout_windows == 2
    assert result.mse_after < 0.8 * result.mse_before
    assert result.heldout_curve[result.best_epoch] < result.heldout_curve[0]


@pytest.mark.parametrize("lr", [5e-5, 1e-3, 3.0])  # 3.0 wrecks the block: B2B must refuse it
def test_b2b_never_raises_the_heldout_error(lr):
    model, cache = _tiny_cache(torch.float32, seed=1)
    layer = copy.deepcopy(decoder_layers(model)[0])
    x, y = cache.hidden[0], cache.hidden[1]
    layer.block_mode = BlockMode.SPD
    before = block_mse(layer, x[6:], y[6:], cache.kwargs)
    result = distill_block(layer, x, y, cache.kwargs, lr=lr, epochs=3, progress=False)
    assert block_mse(layer, x[6:], y[6:], cache.kwargs) <= before  # the last 2 of 8 windows are held out
    if lr == 3.0:
        assert not result.kept and result.mse_after == result.mse_before
        assert min(result.heldout_curve[1:]) > result.heldout_curve[0]


def test_refit_trains_again_on_all_windows_for_the_best_epoch_count():
    from tqdm.auto import tqdm

    from spd_ref.calibration.distill import _fp32, _train

    model, cache = _tiny_cache(torch.float32)
    original = decoder_layers(model)[1]
    x, y = cache.hidden[1], cache.hidden[2]
    layer = copy.deepcopy(original)
    result = distill_block(layer, x, y, cache.kwargs, lr=1e-3, epochs=4, refit=True, progress=False)
    assert result.kept and result.refit and result.best_epoch > 0
    reference = copy.deepcopy(original)
    reference.block_mode = BlockMode.SPD
    _train(reference, x, y, _fp32(cache.kwargs), result.best_epoch, lr=1e-3, batch_size=1, weight_decay=0.0,
           seed=0, bar=tqdm(disable=True))
    for (name, a), b in zip(layer.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
