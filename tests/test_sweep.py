"""The sweep's bookkeeping: recovery per class, averages, the 1-point rule on the paired interval, the
report, and resuming from the store (a tiny random model; lm-eval replaced by a per-item scorer)."""
import pytest
import torch

from conftest import random_model, tiny_config
from spd_ref.calibration.sensitivity import BlockClass
from spd_ref.evaluation.store import ResultStore
from spd_ref.evaluation.sweep import recovery, sweep_tp
from spd_ref.evaluation.sweep_rows import average_accuracy, largest_ratio_within, report


def rows_for(strategy, accs_by_ratio, ci_by_ratio, ppl=100.0):
    out = []
    for r, accs in accs_by_ratio.items():
        drop = sum(accs_by_ratio[0.0]) / 2 - sum(accs) / 2
        low, high = ci_by_ratio[r]
        out += [{"tp": 4, "strategy": strategy, "spd_ratio": r, "task": t, "metric": "acc", "value": v,
                 "drop": drop, "drop_ci95": [low, high], "drop_n_items": 1000} for t, v in zip("ab", accs)]
        out.append({"tp": 4, "strategy": strategy, "spd_ratio": r, "task": "w", "metric": "word_perplexity",
                    "value": ppl})
    return out


def test_recovery_by_strategy_and_class():
    assert recovery("zs", BlockClass.EXTREME) == "zs" and recovery("random", BlockClass.SENSITIVE) == "zs"
    assert recovery("b2b", BlockClass.EXTREME) == "b2b" and recovery("b2b", BlockClass.INSENSITIVE) == "zs"
    assert recovery("hg", BlockClass.EXTREME) == "hg+b2b" and recovery("hg", BlockClass.SENSITIVE) == "b2b"


def test_largest_ratio_within_one_point_uses_the_interval():
    accs = {0.0: (0.80, 0.60), 0.25: (0.80, 0.59), 0.5: (0.79, 0.60), 1.0: (0.70, 0.50)}
    # 0.5 point lost at 0.25 and at 0.5, but only 0.25's interval stays under 1 point
    cis = {0.0: (0.0, 0.0), 0.25: (-0.002, 0.009), 0.5: (-0.001, 0.012), 1.0: (0.08, 0.12)}
    rows = rows_for("zs", accs, cis)
    assert abs(average_accuracy(rows)[(4, "zs", 0.5)] - 0.695) < 1e-12
    assert largest_ratio_within(rows) == {(4, "zs"): 0.25}
    text = report(rows)
    assert "| 4 | zs | 0.50 | 0.695 | 0.5 [-0.1, 1.2] | 1000 | 100.0 |" in text
    assert "| 4 | zs | 0.25 |" in text.split("largest")[1]


def test_sweep_resumes_from_its_store(tmp_path, monkeypatch):
    """A second run with the same arguments reads the scan and every scored setting back: no block
    inputs captured, nothing scored; the rows, with their paired drops, are the same."""
    import spd_ref.calibration.data as data
    import spd_ref.evaluation.evaluate as evaluate
    import spd_ref.evaluation.sweep as sweep

    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    calls = {"score": 0, "capture": 0}

    def score(model, tokenizer, tasks, limit=None, batch_size=16):  # per-item: is the next token the top-1 prediction?
        calls["score"] += 1
        with torch.no_grad():
            hits = (model(ids).logits[:, :-1].argmax(-1) == ids[:, 1:]).float().flatten().tolist()
        return [{"task": "t", "metric": "acc", "value": sum(hits) / len(hits), "items": hits}]

    def capture(*args, **kwargs):
        calls["capture"] += 1
        return capture_block_inputs(*args, **kwargs)

    capture_block_inputs = sweep.capture_block_inputs
    monkeypatch.setattr(evaluate, "evaluate_model", score)
    monkeypatch.setattr(data, "calibration_tokens", lambda tok, n, seq, seed: ids.repeat(n, 1)[:n])  # n windows
    monkeypatch.setattr(sweep, "capture_block_inputs", capture)
    model, store = random_model(tiny_config(layers=4)), ResultStore(tmp_path)
    run = lambda: sweep_tp(model, None, 2, [0.0, 0.5, 1.0], strategies=("zs", "random"), eval_dtype=torch.float32,
                           progress=False, model_name="tiny", store=store)
    first = run()
    assert calls == {"score": 4, "capture": 1}  # ratio 0 and ratio 1 (all blocks) are one setting each
    second = run()
    assert calls == {"score": 4, "capture": 1} and second == first
    base = [r for r in first if r.get("spd_ratio") == 0.0]
    assert all(r["drop"] == 0.0 and r["drop_ci95"] == [0.0, 0.0] for r in base)
    spd = [r for r in first if r.get("spd_ratio") == 1.0 and r["strategy"] == "zs"][0]
    assert spd["drop_ci95"][0] <= spd["drop"] <= spd["drop_ci95"][1] and spd["drop_n_items"] == 60
    # one setting alone (ratios without 0, as a second process would): the baseline comes from the store
    alone = sweep_tp(model, None, 2, [0.25], strategies=("zs",), eval_dtype=torch.float32, progress=False,
                     model_name="tiny", store=store)
    assert calls["score"] == 5 and all("drop_ci95" in r for r in alone if r.get("metric") == "acc")
    # another lm-eval batch size is another setting: scored anew, never paired with the first run's
    sweep_tp(model, None, 2, [0.0, 1.0], strategies=("zs",), eval_dtype=torch.float32, batch_size=8,
             progress=False, model_name="tiny", store=store)
    assert calls["score"] == 7


def test_scorer_is_the_model_in_the_scoring_dtype(monkeypatch):
    """The scorer, built without an fp32 copy, computes what the model cast to bf16 computes, also when
    reset from the model's own weights after scoring recovered blocks (no copy of the originals is kept)."""
    import copy

    import spd_ref.evaluation.evaluate as evaluate
    import spd_ref.evaluation.sweep as sweep
    from spd_ref.calibration.sensitivity import BlockClass
    from spd_ref.hf import apply_tp, remove_tp

    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    seen = {}

    def score(model, tokenizer, tasks, limit=None, batch_size=16):
        with torch.no_grad():
            seen.setdefault("logits", []).append(model(ids).logits)
            seen["dtypes"] = {p.dtype for p in model.parameters()}
            seen["batch_size"] = batch_size
        return [{"task": "t", "metric": "acc", "value": 0.5, "items": [0.0, 1.0]}]

    import spd_ref.calibration.data as data

    monkeypatch.setattr(evaluate, "evaluate_model", score)
    monkeypatch.setattr(data, "calibration_tokens", lambda tok, n, seq, seed: ids)
    monkeypatch.setattr(sweep, "classify", lambda scan: [BlockClass.SENSITIVE] * len(scan.scores))  # B2B for all
    model = random_model(tiny_config(layers=2))
    want_model = apply_tp(copy.deepcopy(model).to(torch.bfloat16), 2, [])
    with torch.no_grad():
        want = want_model(ids).logits
    # ratio 0 first (the baseline), then every block recovered, then ratio 0 again on the reset scorer
    sweep_tp(model, None, 2, [1.0, 0.0], strategies=("b2b",), eval_dtype=torch.bfloat16, batch_size=4,
             samples=2, seq_len=12, progress=False, model_name="t")
    plain, recovered, reset = seen["logits"]
    assert seen["dtypes"] == {torch.bfloat16} and seen["batch_size"] == 4
    assert torch.equal(plain, want) and torch.equal(reset, want) and not torch.equal(recovered, want)
    assert {p.dtype for p in remove_tp(model).parameters()} == {torch.float32}  # the model itself unchanged


def test_recovery_gains_are_paired_and_skip_identical_settings():
    from spd_ref.evaluation.sweep_rows import recovery_gains

    def rows(strategy, ratio, items, recovered):
        return [{"tp": 2, "strategy": strategy, "spd_ratio": ratio, "task": "t", "metric": "acc",
                 "value": sum(items) / len(items), "items": items, "recovered": recovered}]

    zs = [1.0] * 50 + [0.0] * 50
    b2b = [1.0] * 60 + [0.0] * 40  # 10 more items right, none lost: a paired gain of 10 points
    got = recovery_gains(rows("zs", 1.0, zs, {}) + rows("b2b", 1.0, b2b, {"0": "b2b"})
                         + rows("hg", 1.0, b2b, {"0": "hg+b2b"})
                         + rows("zs", 0.5, zs, {}) + rows("b2b", 0.5, zs, {}))  # nothing recovered at 0.5
    assert set(got) == {(2, 1.0, "b2b - zs"), (2, 1.0, "hg - b2b")}
    gain = got[(2, 1.0, "b2b - zs")]
    assert abs(gain.drop - 0.10) < 1e-12 and 0 < gain.low <= 0.10 <= gain.high
    assert got[(2, 1.0, "hg - b2b")].drop == 0.0


def test_recover_samples_widen_recovery_only(tmp_path, monkeypatch):
    """--recover-samples: the scan reads the first `samples` windows and is the stored one; B2B trains
    on all the windows (by default RECOVER_SAMPLES) and its settings are new in the store; ratio 0 and
    zero-shot ones are reused, and a zero-shot sweep captures the scan's windows only."""
    import spd_ref.calibration.data as data
    import spd_ref.evaluation.evaluate as evaluate
    import spd_ref.evaluation.sweep as sweep
    from spd_ref.calibration.sensitivity import BlockClass

    pool = torch.randint(0, 256, (40, 12), generator=torch.Generator().manual_seed(2))
    seen = {"capture": [], "scan": [], "recover": [], "score": 0}

    def score(model, tokenizer, tasks, limit=None, batch_size=16):
        seen["score"] += 1
        return [{"task": "t", "metric": "acc", "value": 0.5, "items": [0.0, 1.0]}]

    capture, scan, recover = sweep.capture_block_inputs, sweep.sensitivity_scan, sweep.recover_block
    monkeypatch.setattr(sweep, "capture_block_inputs", lambda model, tokens, **kw:
                        seen["capture"].append(tokens.shape[0]) or capture(model, tokens, **kw))
    monkeypatch.setattr(evaluate, "evaluate_model", score)
    monkeypatch.setattr(data, "calibration_tokens", lambda tok, n, seq, seed: pool[:n])
    monkeypatch.setattr(sweep, "classify", lambda s: [BlockClass.SENSITIVE] * len(s.scores))
    monkeypatch.setattr(sweep, "sensitivity_scan", lambda model, cache, **kw:
                        seen["scan"].append(cache.tokens.shape[0]) or scan(model, cache, **kw))
    monkeypatch.setattr(sweep, "recover_block",
                        lambda model, cache, *a, **kw: seen["recover"].append(cache.tokens.shape[0])
                        or recover(model, cache, *a, **kw))
    model, store = random_model(tiny_config(layers=2)), ResultStore(tmp_path)
    run = lambda strategy, more: sweep_tp(model, None, 2, [0.0, 1.0], strategies=(strategy,), samples=2,
                                          seq_len=12, recover_samples=more, eval_dtype=torch.float32,
                                          progress=False, model_name="t", store=store)
    run("zs", None)
    assert seen == {"capture": [2], "scan": [2], "recover": [], "score": 2}
    rows = run("b2b", 6)
    assert seen == {"capture": [2, 6], "scan": [2], "recover": [6, 6], "score": 3}  # stored scan; B2B scored
    assert {r["recover_samples"] for r in rows if r.get("spd_ratio") == 1.0} == {6}
    run("b2b", 2)  # B2B on the scan's 2 windows: another setting
    assert seen["recover"] == [6, 6, 2, 2] and seen["score"] == 4
    run("b2b", None)  # the default: RECOVER_SAMPLES
    assert seen["recover"] == [6, 6, 2, 2, 32, 32] and seen["score"] == 5
    with pytest.raises(ValueError, match="recover_samples=1 is below samples=2"):
        run("b2b", 1)


def test_sweep_gains_pair_the_settings_two_sweeps_share():
    from spd_ref.evaluation.sweep_rows import sweep_gains

    def rows(ratio, items, strategy="b2b"):
        return [{"tp": 4, "strategy": strategy, "spd_ratio": ratio, "task": "t", "metric": "acc",
                 "value": sum(items) / len(items), "items": items}]

    eight = rows(0.0, [1.0] * 100) + rows(1.0, [1.0] * 50 + [0.0] * 50) + rows(0.5, [1.0] * 100, "zs")
    more = rows(0.0, [1.0] * 100) + rows(1.0, [1.0] * 55 + [0.0] * 45)  # 5 items more right
    got = sweep_gains(more, eight)
    assert set(got) == {(4, "b2b", 1.0)}  # ratio 0 and a setting only one sweep scored are left out
    assert abs(got[(4, "b2b", 1.0)].drop - 0.05) < 1e-12 and got[(4, "b2b", 1.0)].low > 0
