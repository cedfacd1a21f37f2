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
