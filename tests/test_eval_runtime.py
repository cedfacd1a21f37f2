"""The same SPD plan scored by lm-eval in one process (simulated TP) and under torchrun (real TP)."""
import json

from conftest import torchrun
from spd_ref.calibration.calibrate import calibrate
from spd_ref.calibration.data import calibration_tokens
from spd_ref.evaluation.eval_command import cli as eval_cli
from spd_ref.plan import save_plan

TASKS, LIMIT = "spd_analogy,spd_polarity,spd_lambada", 20


def scores(path):
    return {(r["task"], r["metric"]): (r["value"], r["n_items"]) for r in map(json.loads, open(path))}


def test_simulated_and_torchrun_evaluation_agree(smollm2, tmp_path):
    model, tok = smollm2
    # tau1 < 0 makes every block "sensitive", so the plan carries B2B-trained weights to check too
    plan = calibrate(model, tok, 2, 0.3, tokens=calibration_tokens(tok, 2, 64), epochs=1, tau1=-1.0, tau2=1.0,
                     progress=False)
    assert any(b.strategy != "zs" for b in plan.blocks if b.chosen)  # the plan carries trained weights
    save_plan(plan, tmp_path / "plan")
    args = ["--model", "smollm2", "--plan", str(tmp_path / "plan"), "--tasks", TASKS, "--limit", str(LIMIT)]
    assert eval_cli(args + ["--out", str(tmp_path / "sim.jsonl")]) == 0
    torchrun(2, ["eval", *args, "--out", str(tmp_path / "real.jsonl")])
    sim, real = scores(tmp_path / "sim.jsonl"), scores(tmp_path / "real.jsonl")
    assert sim.keys() == real.keys() and len(sim) >= 3
    for key, (value, n) in sim.items():
        # same items: equal, or one item apart where two choices' log-likelihoods nearly tie
        tol = 1.0 / n + 1e-9 if key[1].startswith("acc") else 1e-3 * abs(value)
        assert abs(real[key][0] - value) <= tol, (key, value, real[key][0])
    assert json.loads(open(tmp_path / "real.jsonl").readline())["runtime"] == "torchrun"
