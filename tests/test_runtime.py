"""The torchrun runtime (spd_ref.model) against simulated TP: same logits, prefill and decode."""

import pytest
import torch

from conftest import random_model, tiny_config, torchrun
from spd_ref.hf import apply_tp, remove_tp
from spd_ref.models import load_model
from spd_ref.model import TPTransformer, attention
from spd_ref.tp import init_distributed

STEPS = 8
TOL = 1e-4


def simulated_logits(model, ids, n, blocks):
    """Prefill logits and the logits of each greedy step, from the simulated model's generate()."""
    try:
        apply_tp(model, n, blocks)
        with torch.no_grad():
            prefill = model(ids).logits
            out = model.generate(ids, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
    finally:
        remove_tp(model)
    return prefill, list(out.logits), out.sequences[0, ids.shape[1]:]


def assert_same(run_logits, run_tokens, prefill, steps, tokens):
    assert (run_logits[0] - prefill).abs().max() <= TOL
    for got, want in zip(run_logits[1:], steps[1:]):
        assert (got[:, -1] - want).abs().max() <= TOL
    assert run_tokens == tokens.tolist()


@pytest.mark.parametrize("blocks, attention, kv_heads", [
    ([], "sdpa", 4), ([0, 2], "sdpa", 4), ([0, 2], "math", 4), ([0, 2], "math", 2), ([0, 2], "flex", 2)])
def test_single_process_runtime_matches_simulated(blocks, attention, kv_heads):
    model = random_model(tiny_config(bias=True, kv_heads=kv_heads))
    ids = torch.randint(0, 256, (1, 11))
    prefill, steps, tokens = simulated_logits(model, ids, 1, blocks)
    rt = TPTransformer.from_hf(model.config, model.state_dict(), init_distributed())
    rt.set_spd_blocks(blocks)
    rt.attention = attention
    got_tokens, got = rt.generate(ids, STEPS)
    assert_same(got, got_tokens[0].tolist(), prefill, steps, tokens)


@pytest.mark.parametrize("n, blocks, speed_flags", [
    (2, [], []), (2, [0, 2], ["--lm-head", "replicated"]), (4, [], ["--lm-head", "replicated"]),
    (4, [1, 2], ["--compile"])])
def test_torchrun_matches_simulated_random_model(tiny_model_dir, tmp_path, n, blocks, speed_flags):
    """Also: the lm_head modes (split by vocabulary, padded here; replicated) give the same logits."""
    model, tok = load_model(str(tiny_model_dir))
    ids = torch.tensor([[5, 77, 1000, 31, 2024, 9, 400, 123, 7]])
    out = tmp_path / "logits.pt"
    torchrun(n, ["generate", "--model", str(tiny_model_dir), "--prompt-ids", ",".join(map(str, ids[0].tolist())),
                 "--max-new-tokens", str(STEPS), "--spd-blocks", ",".join(map(str, blocks)),
                 "--save-logits", str(out), "--tp", str(n), *speed_flags])
    saved = torch.load(out)
    assert saved["tp"] == n and saved["sync_points_per_token"] == 2 * 3 - len(blocks)
    assert_same(saved["logits"], saved["tokens"], *simulated_logits(model, ids, n, blocks))


@pytest.mark.parametrize("blocks", [[], [2, 9, 10, 11, 20, 29]])
def test_torchrun_matches_simulated_smollm2(smollm2, tmp_path, blocks):
    model, tok = smollm2
    prompt = "The capital of France is Paris. The capital of Italy is"
    out = tmp_path / "logits.pt"
    done = torchrun(3, ["generate", "--model", "smollm2", "--prompt", prompt, "--max-new-tokens", str(STEPS),
                        "--spd-blocks", ",".join(map(str, blocks)), "--save-logits", str(out)])
    saved = torch.load(out)
    ids = tok(prompt, return_tensors="pt").input_ids
    assert_same(saved["logits"], saved["tokens"], *simulated_logits(model, ids, 3, blocks))
    assert "sync points per token" in done.stdout


@pytest.mark.parametrize("n_kv", [6, 3, 2, 1])
@pytest.mark.parametrize("t", [1, 4])
def test_math_and_flex_attention_equal_sdpa(n_kv, t):
    g = torch.Generator().manual_seed(n_kv * 10 + t)
    q = torch.randn(2, 6, t, 8, generator=g)
    keys, values = (torch.randn(2, n_kv, 9, 8, generator=g) for _ in range(2))
    mask = torch.ones(9, 9, dtype=torch.bool).tril()[9 - t:][None, None]  # the last t positions, causal
    want = attention(q, keys, values, mask, "sdpa")
    assert (attention(q, keys, values, mask, "math") - want).abs().max() <= 1e-5
    assert (attention(q, keys, values, mask, "flex") - want).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="'flash'.*sdpa, math, flex"):
        attention(q, keys, values, mask, "flash")


def test_vocab_shards_cover_the_head_once():
    from spd_ref.shards import vocab_shard

    head = torch.randn(10, 3)
    for world in (1, 2, 3, 4):
        shards = [vocab_shard(head, r, world) for r in range(world)]
        assert len({s.shape for s in shards}) == 1  # equal pieces for the all-gather
        assert torch.equal(torch.cat(shards)[:10], head) and not torch.cat(shards)[10:].any()


def test_lm_head_mode_is_checked_when_set():
    rt = TPTransformer.random(tiny_config(), init_distributed(), torch.float32)
    rt.lm_head_mode = "replicated"
    with pytest.raises(ValueError, match="'vocab'.*split, replicated"):
        rt.lm_head_mode = "vocab"
    assert rt.lm_head_mode == "replicated"


def test_compile_mode_auto_picks_a_mode_by_token_rows():
    """auto: max-autotune for one-row decode, default for more rows; one compiled function per mode."""
    from spd_ref.model import AUTO_COMPILE, compile_mode_for

    assert [compile_mode_for("auto", r) for r in (1, 2, 16)] == [AUTO_COMPILE[0], AUTO_COMPILE[1], AUTO_COMPILE[1]]
    assert compile_mode_for("default", 1) == "default"
    rt = TPTransformer.from_hf(tiny_config(), random_model(tiny_config()).state_dict(), init_distributed())
    rt.compile_blocks("auto")
    assert rt._block_fn_for_rows(1) is not rt._block_fn_for_rows(16)
    assert rt._block_fn_for_rows(16) is rt._block_fn_for_rows(4)
    rt.compile_blocks("default")
    assert rt._block_fn_for_rows(1) is rt._block_fn_for_rows(16)
    with pytest.raises(ValueError, match="compile mode 'fast'"):
        rt.compile_blocks("fast")
    with pytest.raises(ValueError, match="linear impl 'cuda'"):
        rt.linear = "cuda"
