"""An interrupted calibration resumes from its checkpoint without redoing finished work, and an
interrupted plan write never leaves a plan that loads (issue 15, item 3)."""
import json

import pytest

import spd_ref.calibration.calibrate as C
import spd_ref.calibration.recover as R
from conftest import random_model, tiny_config
from spd_ref.calibration.resume import FOLDER
from spd_ref.plan import PLAN_FILE, WEIGHTS_FILE, load_plan, save_plan


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, smollm2):
    folder = tmp_path_factory.mktemp("tiny4")
    random_model(tiny_config(layers=4, vocab=smollm2[1].vocab_size)).save_pretrained(folder)
    smollm2[1].save_pretrained(folder)
    return folder


def argv(model_dir, out):
    # tau1 0: every block whose SPD raises perplexity gets B2B; tiny settings keep each run to seconds
    return ["--model", str(model_dir), "--tp", "2", "--ratio", "1", "--out", str(out), "--samples", "2",
            "--seq-len", "32", "--epochs", "1", "--tau1", "0", "--no-hg", "--eval-windows", "0", "--quiet"]


REAL = {"recover_block": R.recover_block, "sensitivity_scan": C.sensitivity_scan}
HOME = {"recover_block": R, "sensitivity_scan": C}  # where calibrate looks each one up


def counting(monkeypatch, name, fail_at=None):
    """Replace `name` where calibrate looks it up by a wrapper that counts calls and raises Ctrl-C at
    call `fail_at`."""
    real, calls = REAL[name], []

    def wrapper(*args, **kwargs):
        calls.append(args[2] if name == "recover_block" else None)
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(HOME[name], name, wrapper)
    return calls


@pytest.mark.slow
def test_interrupted_calibration_resumes_without_redoing_blocks(model_dir, tmp_path, monkeypatch, capsys):
    straight = tmp_path / "straight"
    recovered = counting(monkeypatch, "recover_block")
    assert C.cli(argv(model_dir, straight)) == 0
    assert len(recovered) >= 2, "the test needs two recovered blocks to interrupt between them"
    assert not (straight / FOLDER).exists()  # the checkpoint goes once the plan is written

    out = tmp_path / "resumed"
    interrupted = counting(monkeypatch, "recover_block", fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        C.cli(argv(model_dir, out))
    assert not (out / PLAN_FILE).exists()
    assert sorted(p.name for p in (out / FOLDER).iterdir()) == sorted(
        ["settings.json", "scan.json", f"block{interrupted[0]}.json", f"block{interrupted[0]}.safetensors"])

    scans, again = counting(monkeypatch, "sensitivity_scan"), counting(monkeypatch, "recover_block")
    assert C.cli(argv(model_dir, out)) == 0
    assert scans == [] and again == recovered[1:]  # neither the scan nor the finished block ran again
    assert f"resumed an interrupted run: read back scan, block {recovered[0]}\n" in capsys.readouterr().out
    assert json.loads((out / PLAN_FILE).read_text()) == json.loads((straight / PLAN_FILE).read_text())

    # A checkpoint of other settings is not used (a fresh scan), and the run says so.
    (out / FOLDER).mkdir()
    (out / FOLDER / "settings.json").write_text(json.dumps({"seed": 7}))
    scans = counting(monkeypatch, "sensitivity_scan")
    assert C.cli(argv(model_dir, out)) == 0 and len(scans) == 1
    assert "holds an interrupted calibration with other settings; starting afresh" in capsys.readouterr().err


def test_interrupted_plan_write_leaves_no_plan_that_loads(tmp_path, monkeypatch):
    from spd_ref.plan import Plan

    def plan(value: float) -> Plan:
        import torch

        return Plan("m", 2, 1, {}, [1.0], value, [], [], {}, weights={"w": torch.full((4,), value)})

    save_plan(plan(1.0), tmp_path)
    assert load_plan(tmp_path).base_ppl == 1.0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("spd_ref.plan.json.dumps", interrupted)  # dies before plan.json is written
    with pytest.raises(KeyboardInterrupt):
        save_plan(plan(2.0), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [WEIGHTS_FILE]  # no plan.json, no partial files
    with pytest.raises(FileNotFoundError, match="no plan.json"):
        load_plan(tmp_path)
