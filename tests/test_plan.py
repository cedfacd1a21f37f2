"""The SPD plan: calibrate -> save -> load -> apply gives the same logits; loading validates the model,
TP degree and block count; the torchrun runtime runs a plan like the simulated model does."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import random_model, tiny_config, torchrun
from spd_ref.calibration.calibrate import calibrate, cli
from spd_ref.hf import apply_tp, remove_tp, spd_blocks_of
from spd_ref.models import load_model
from spd_ref.plan import PLAN_FILE, WEIGHTS_FILE, apply_plan, load_plan, merged_state_dict, save_plan

TP = 2


def _tokens(vocab: int, n: int = 4, seq: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))


def _calibrate(model, tp: int = TP):
    # Negative thresholds: every block is "extremely sensitive", so HG and B2B both run.
    return calibrate(model, None, tp, 0.67, tokens=_tokens(model.config.vocab_size), tau1=-2.0, tau2=-1.0,
                     epochs=2, map_samples=2, progress=False, model_id="tiny")


@pytest.fixture(scope="module")
def made():
    model = random_model(tiny_config(heads=4, kv_heads=2, bias=True))
    original = copy.deepcopy(model)
    plan = _calibrate(model)
    return model, original, plan


def test_calibrate_leaves_model_and_records_everything(made):
    model, original, plan = made
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values()))
    assert plan.num_blocks == 3 and plan.tp_degree == TP and len(plan.spd_blocks) == 2
    assert [r.block for r in plan.blocks] == [0, 1, 2]
    for r in plan.blocks:
        assert r.chosen == (r.block in plan.spd_blocks)
        assert r.strategy == "hg+b2b" and r.block_class == "extremely sensitive"
        if r.chosen:
            assert len(r.b2b["loss_curve"]) == 2 and r.hg["head_perm"] is not None
            assert r.hg["mse_after_hg"] == pytest.approx(r.b2b["mse_before"], rel=1e-5)
            assert r.hg["mse_zero_shot"] > 0
            assert 0 <= r.b2b["mse_after"] < 1e-3  # B2B's effect is tested on SmolLM2 (test_distill)
    # Only the chosen blocks' weights are in the plan, under transformers' names.
    assert {k.split(".")[2] for k in plan.weights} == {str(b) for b in plan.spd_blocks}
    assert "model.layers.%d.self_attn.q_proj.weight" % plan.spd_blocks[0] in plan.weights


def test_saved_plan_gives_same_logits(made, tmp_path):
    model, original, plan = made
    ids = _tokens(model.config.vocab_size, 2, 12, seed=5)
    in_memory = apply_plan(copy.deepcopy(original), plan)
    save_plan(plan, tmp_path / "plan")
    loaded = load_plan(tmp_path / "plan", model_config=original.config, tp_degree=TP)
    from_disk = apply_plan(copy.deepcopy(original), loaded)
    assert spd_blocks_of(from_disk) == plan.spd_blocks and from_disk.tp_degree == TP
    with torch.no_grad():
        want, got = in_memory(ids).logits, from_disk(ids).logits
        tp_only = apply_tp(copy.deepcopy(original), TP)(ids).logits
    assert torch.equal(want, got)
    assert (got - tp_only).abs().max() > 1e-4  # the plan does change the model
    assert loaded.table() == plan.table() and "hg+b2b" in loaded.table()
    meta = json.loads((tmp_path / "plan" / PLAN_FILE).read_text())
    for key in ("model_id", "tp_degree", "num_blocks", "blocks", "spd_blocks", "settings", "versions", "base_ppl"):
        assert key in meta
    assert meta["settings"]["tau1"] == -2.0 and "torch" in meta["versions"]
    # The torchrun runtime's route: the original state dict with the plan's weights merged in.
    merged = merged_state_dict(loaded, original.state_dict())
    assert all(torch.equal(merged[k], from_disk.state_dict()[k]) for k in loaded.weights)


def test_load_rejects_other_model_tp_degree_and_block_count(made, tmp_path):
    _, original, plan = made
    save_plan(plan, tmp_path)
    with pytest.raises(ValueError, match=r"tp_degree=2, not tp_degree=4"):
        load_plan(tmp_path, original.config, tp_degree=4)
    with pytest.raises(ValueError, match=r"3 blocks .* has 5"):
        load_plan(tmp_path, tiny_config(heads=4, kv_heads=2, bias=True, layers=5))
    with pytest.raises(ValueError, match=r"hidden_size: plan 64 vs model 128"):
        load_plan(tmp_path, tiny_config(heads=4, kv_heads=2, bias=True, hidden=128))
    other_weights = random_model(tiny_config(heads=4, kv_heads=2, bias=True), seed=1)
    with pytest.raises(ValueError, match="other weights"):
        apply_plan(other_weights, plan)
    with pytest.raises(FileNotFoundError, match="no plan.json"):
        load_plan(tmp_path / "nowhere")
    (tmp_path / WEIGHTS_FILE).write_bytes((tmp_path / WEIGHTS_FILE).read_bytes()[:-8])
    with pytest.raises(ValueError, match="checksum"):
        load_plan(tmp_path)


def test_calibrate_restores_a_tp_model(made):
    _, original, _ = made
    model = apply_tp(copy.deepcopy(original), 4, [1])
    plan = calibrate(model, None, TP, 0.34, tokens=_tokens(256), b2b=False, hg=False, progress=False)
    assert model.tp_degree == 4 and spd_blocks_of(model) == [1]
    assert plan.weights == {} and all(r.strategy == "zs" for r in plan.blocks)
    remove_tp(model)


def test_cli_writes_a_plan(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "plan"
    code = cli(["--model", str(tiny_model_dir), "--tp", "2", "--ratio", "0.34", "--out", str(out), "--samples", "2",
                "--seq-len", "16", "--epochs", "1", "--tau1=-2", "--tau2=-1", "--eval-windows", "1", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "strategy" in printed and "held-out PPL" in printed
    model, _ = load_model(str(tiny_model_dir))
    plan = load_plan(out, model.config, 2)
    assert len(plan.spd_blocks) == 1 and plan.settings["samples"] == 2


def test_torchrun_runs_the_plan_like_the_simulated_model(tiny_model_dir, tmp_path):
    """2 gloo processes load the plan (spd_ref.generate --plan) and match the simulated model's logits."""
    model, _ = load_model(str(tiny_model_dir))
    plan = _calibrate(copy.deepcopy(model))
    save_plan(plan, tmp_path / "plan")
    ids = torch.tensor([[5, 77, 1000, 31, 2024, 9, 400, 123, 7]])
    out = tmp_path / "logits.pt"
    torchrun(TP, ["generate", "--model", str(tiny_model_dir), "--plan", str(tmp_path / "plan"), "--prompt-ids",
                  ",".join(map(str, ids[0].tolist())), "--max-new-tokens", "4", "--save-logits", str(out)])
    saved = torch.load(out)
    simulated = apply_plan(model, plan)
    with torch.no_grad():
        prefill = simulated(ids).logits
        tokens = simulated.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)[0, ids.shape[1]:]
    assert saved["spd_blocks"] == plan.spd_blocks
    assert (saved["logits"][0] - prefill).abs().max() <= 1e-4
    assert saved["tokens"] == tokens.tolist()
