"""Simulated TP/SPD on transformers models (METHOD.md s.1-2), against the unmodified model."""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import random_model, tiny_config
from spd_ref.block import BlockMode
from spd_ref.hf import apply_tp, remove_tp, set_spd_blocks
from spd_ref.models import load_model

TOL = 1e-4  # fp32: the only difference from the original is the order of the partial sums


def logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw)


@pytest.fixture(scope="module")
def prompt(smollm2):
    return smollm2[1]("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids


def tiny_models():
    return {"mha": random_model(tiny_config()), "mha_bias": random_model(tiny_config(bias=True)),
            "gqa_bias": random_model(tiny_config(heads=6, kv_heads=2, bias=True, hidden=96))}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_tp_without_spd_equals_original_smollm2(smollm2, prompt, n):
    model = smollm2[0]
    ref = logits(model, prompt).logits
    try:
        apply_tp(model, n)
        assert (logits(model, prompt).logits - ref).abs().max() <= TOL
    finally:
        remove_tp(model)
    assert torch.equal(logits(model, prompt).logits, ref)  # remove_tp restores the original exactly


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("kind", ["mha", "mha_bias", "gqa_bias"])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_tp_without_spd_equals_original_random(kind, n, fast):
    model = tiny_models()[kind]
    ids = torch.randint(0, 256, (2, 17))
    ref = logits(model, ids).logits
    apply_tp(model, n, fast=fast)
    assert (logits(model, ids).logits - ref).abs().max() <= TOL


@pytest.mark.parametrize("mode", [BlockMode.SPD, BlockMode.NAIVE])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_fast_path_equals_rank_by_rank(mode, n):
    """Batched SPD shards (padded to a common width: 6 heads and 98 MLP columns split unevenly at
    N = 4) and TP blocks run as the original layer give the rank-by-rank logits and gradients."""
    model = random_model(tiny_config(heads=6, kv_heads=2, bias=True, hidden=96, intermediate=98))
    ids = torch.randint(0, 256, (2, 13))
    outs = []
    for fast in (False, True):
        apply_tp(model, n, spd_blocks=[0, 2], mode=mode, fast=fast)
        model.zero_grad()
        out = model(ids, labels=ids)
        out.loss.backward()
        outs.append((out.logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    (ranks, ranks_grad), (fast, fast_grad) = outs
    assert (fast - ranks).abs().max() <= TOL
    assert (ranks - logits(remove_tp(model), ids).logits).abs().max() > 1e-3  # SPD changed the output
    assert max((fast_grad[k] - g).abs().max() for k, g in ranks_grad.items()) <= TOL


@pytest.mark.parametrize("kind", ["mha", "mha_bias", "gqa_bias"])
def test_spd_at_one_rank_is_the_original_model(kind):
    model = tiny_models()[kind]
    ids = torch.randint(0, 256, (1, 12))
    ref = logits(model, ids).logits
    apply_tp(model, 1, spd_blocks=range(3))
    assert (logits(model, ids).logits - ref).abs().max() <= TOL


def test_spd_on_block_k_changes_only_what_follows(smollm2, prompt):
    model, k = smollm2[0], 7
    try:
        apply_tp(model, 3)
        tp = logits(model, prompt, output_hidden_states=True)
        set_spd_blocks(model, [k])
        out = logits(model, prompt, output_hidden_states=True)
    finally:
        remove_tp(model)
    for i in range(k + 1):  # hidden_states[i] is the input of block i: bit-identical up to block k
        assert torch.equal(out.hidden_states[i], tp.hidden_states[i])
    assert (out.hidden_states[k + 1] - tp.hidden_states[k + 1]).abs().max() > 1e-2
    assert (out.logits - tp.logits).abs().max() > 1e-2


def test_naive_drop_differs_from_spd(smollm2):
    """Skipping the attention all-reduce without SPD's re-wiring loses the other ranks' attention."""
    model, tok = smollm2
    ids = tok("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
              "It is named after the engineer Gustave Eiffel, whose company built it.", return_tensors="pt").input_ids
    blocks = range(15, 30)
    try:
        apply_tp(model, 3, spd_blocks=blocks)
        spd = logits(model, ids, labels=ids)
        set_spd_blocks(model, blocks, BlockMode.NAIVE)
        naive = logits(model, ids, labels=ids)
    finally:
        remove_tp(model)
    assert (naive.logits - spd.logits).abs().max() > 0.5
    assert naive.loss > spd.loss + 1.0  # measured: 6.05 against 2.53 nats/token (original 1.83)


def test_spd_block_matches_method_equation_with_biases():
    """The SPD block output, written out by hand from METHOD.md s.2 (biases added once)."""
    model, n, k = random_model(tiny_config(bias=True)), 2, 1
    ids = torch.randint(0, 256, (1, 9))
    layer = model.model.layers[k]
    captured = {}
    hook = layer.self_attn.o_proj.register_forward_hook(lambda m, a, o: captured.update(a=a[0]))
    ref = logits(model, ids, output_hidden_states=True)
    hook.remove()
    x, a = ref.hidden_states[k], captured["a"]
    attn, mlp, hd = layer.self_attn, layer.mlp, 16
    out = x + attn.o_proj.bias + mlp.down_proj.bias
    for rank, (h, c) in enumerate([(slice(0, 2 * hd), slice(0, 48)), (slice(2 * hd, 4 * hd), slice(48, 96))]):
        p = F.linear(a[..., h], attn.o_proj.weight[:, h])
        y = layer.post_attention_layernorm(x + p + attn.o_proj.bias)
        z = F.linear(F.silu(F.linear(y, mlp.gate_proj.weight[c], mlp.gate_proj.bias[c]))
                     * F.linear(y, mlp.up_proj.weight[c], mlp.up_proj.bias[c]), mlp.down_proj.weight[:, c])
        out = out + p + z
    apply_tp(model, n, spd_blocks=[k])
    got = logits(model, ids, output_hidden_states=True).hidden_states[k + 1]
    assert (got - out).abs().max() <= TOL
    assert (got - ref.hidden_states[k + 1]).abs().max() > 1e-3  # and it is not plain TP


def test_patched_model_still_generates(smollm2, prompt):
    model, tok = smollm2
    try:
        apply_tp(model, 3, spd_blocks=[20, 21])
        out = model.generate(prompt, max_new_tokens=4, do_sample=False)
    finally:
        remove_tp(model)
    assert out.shape[1] == prompt.shape[1] + 4
    assert "Rome" in tok.decode(out[0, prompt.shape[1]:])


def test_bad_input_errors(smollm2):
    model = smollm2[0]
    with pytest.raises(ValueError, match=r"tp_degree=10 .*at most 9"):
        apply_tp(copy.deepcopy(model), 10)
    try:
        apply_tp(model, 2)
        with pytest.raises(ValueError, match=r"index 30 is out of range.*0\.\.29"):
            set_spd_blocks(model, [3, 30])
    finally:
        remove_tp(model)
    with pytest.raises(FileNotFoundError, match=r"'/no/such/model' does not exist.*Fix"):
        load_model("/no/such/model")
