"""spd_ref.notebooks (nb03, nb04, nb05): the helpers of notebooks 03-05, on a tiny random LLaMA and on the recorded GPU rows."""
import functools

import pytest
import torch

from conftest import random_model, tiny_config
from spd_ref.notebooks import communication_cost as nb01
from spd_ref.notebooks import latency_and_accuracy as nb05
from spd_ref.notebooks import recovering_sensitive_blocks as nb04
from spd_ref.notebooks import sensitivity_and_calibration as nb03
from spd_ref.block import BlockMode
from spd_ref.calibration.distill import distill_block, trained_copy
from spd_ref.calibration.headgroup import head_distances, head_grouping
from spd_ref.hf import apply_tp, decoder_layers
from spd_ref.latency.report import current_rows
from spd_ref.plan import load_plan, save_plan
from spd_ref.calibration.sensitivity import capture_block_inputs, classify, perplexity, sensitivity_scan

PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def tp_model():
    """A 4-block GQA model (8 query heads, 4 KV heads) under simulated TP at N = 4."""
    return apply_tp(random_model(tiny_config(heads=8, kv_heads=4, layers=4), seed=1), 4)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def cache(tp_model, tokens):
    return capture_block_inputs(tp_model, tokens, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def scan(tp_model, cache):
    return sensitivity_scan(tp_model, cache, progress=False)


# ---- notebook 03 ---------------------------------------------------------------------------------
def test_block_ranges():
    assert nb03.block_ranges([6, 0, 1, 2, 4, 7]) == "0-2, 4, 6-7"
    assert nb03.block_ranges([3]) == "3" and nb03.block_ranges([]) == "-"


def test_selection_perplexity_is_the_full_forward_perplexity(tp_model, cache, tokens):
    for blocks in ([], [2, 3], [0, 2], [1]):
        cached = nb03.selection_perplexity(tp_model, cache, blocks)
        apply_tp(tp_model, 4, blocks)
        assert cached == pytest.approx(perplexity(tp_model, tokens), rel=1e-5)
    apply_tp(tp_model, 4, [3])
    nb03.selection_perplexity(tp_model, cache, [0, 1])
    assert [l.block_mode for l in decoder_layers(tp_model)].count(BlockMode.SPD) == 1  # restored
    apply_tp(tp_model, 4)


def test_selections_and_their_comparison(tp_model, cache, scan):
    assert nb03.selection_blocks("sensitivity", [0.3, 0.1, 0.2, 0.0], 0.5) == [1, 3]
    assert nb03.selection_blocks("first", [0.3, 0.1, 0.2, 0.0], 0.5) == [0, 1]
    assert nb03.selection_blocks("last", [0.3, 0.1, 0.2, 0.0], 0.75) == [1, 2, 3]
    rows = nb03.compare_selections(tp_model, cache, scan.scores, ratios=(0.25, 1.0))
    assert [(r["ratio"], r["selection"]) for r in rows] == [(x, k) for x in (0.25, 1.0) for k in nb03.SELECTIONS]
    assert len({r["ppl"] for r in rows if r["ratio"] == 1.0}) == 1  # every order picks every block
    assert rows[-1]["ppl"] == pytest.approx(scan.suffix_ppl[0], rel=1e-5) and rows[-1]["blocks"] == "0-3"
    assert nb03.plot_selections(rows, scan.base_ppl).data[:4] == PNG


def test_class_summary_and_sensitivity_figure(scan):
    classes = classify(scan, tau1=-1e9, tau2=0.0)  # scores up to 0: sensitive, positive: extreme
    summary = {s["block_class"]: s for s in nb03.class_summary(scan, classes)}
    assert summary["in-sensitive"]["count"] == 0 and sum(s["count"] for s in summary.values()) == 4
    extreme = [l for l, s in enumerate(scan.relative) if s > 0]
    assert summary["extremely sensitive"]["blocks"] == nb03.block_ranges(extreme)
    assert summary["sensitive"]["strategy"] == "b2b" and summary["extremely sensitive"]["strategy"] == "hg+b2b"
    if extreme:
        assert summary["extremely sensitive"]["max_rel"] == max(scan.relative)
    assert nb03.plot_sensitivity(scan, classes, 0.005, 0.05).data[:4] == PNG


def test_zero_shot_plan_round_trips_and_applies(tp_model, scan, tmp_path, tokens):
    classes = classify(scan)
    plan = nb03.zero_shot_plan(tp_model, scan, classes, 4, ratio=0.5, settings=dict(samples=3, seq_len=16),
                                model_id="tiny")
    assert plan.spd_blocks == sorted(sorted(range(4), key=lambda l: (scan.scores[l], l))[:2]) and not plan.weights
    assert all(r.strategy == "zs" and r.chosen == (r.block in plan.spd_blocks) for r in plan.blocks)
    assert plan.settings["b2b"] is False and plan.settings["suffix_ppl"] == scan.suffix_ppl
    loaded = load_plan(save_plan(plan, tmp_path / "plan"), tp_model.config, tp_degree=4)
    assert loaded.spd_blocks == plan.spd_blocks and [r.block_class for r in loaded.blocks] == [c.value for c in classes]
    with pytest.raises(ValueError, match="tp_degree=2"):
        load_plan(tmp_path / "plan", tp_model.config, tp_degree=2)


# ---- notebook 04 ---------------------------------------------------------------------------------
def test_swapped_block_and_mse_in_mode(tp_model, cache):
    original = decoder_layers(tp_model)[1]
    assert nb04.mse_in_mode(original, cache, 1, BlockMode.TP) < 1e-12
    assert nb04.mse_in_mode(original, cache, 1) > 1e-8 and original.block_mode is BlockMode.TP
    copy = trained_copy(original)
    with torch.enable_grad():
        result = distill_block(copy, cache.hidden[1], cache.hidden[2], cache.kwargs, lr=1e-3, epochs=3, progress=False)
    assert nb04.mse_in_mode(copy, cache, 1) == pytest.approx(result.mse_after)
    with nb04.swapped_block(tp_model, 1, copy):
        assert decoder_layers(tp_model)[1] is copy
        assert nb03.selection_perplexity(tp_model, cache, [1]) != nb03.selection_perplexity(tp_model, cache, [])
    assert decoder_layers(tp_model)[1] is original
    assert nb04.plot_loss_curves({"b2b": result}).data[:4] == PNG


def test_heads_by_rank_and_the_head_grouping_figure(tp_model, cache):
    layer = trained_copy(decoder_layers(tp_model)[2])
    hg = head_grouping(layer, cache.hidden[2], cache.kwargs)
    rows = nb04.heads_by_rank(hg.head_perm, layer.partition, kv_group=2)
    assert [r["heads_before"] for r in rows] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert sorted(h for r in rows for h in r["heads_after"]) == list(range(8))
    assert all(r["kv_after"] == sorted({h // 2 for h in r["heads_after"]}) for r in rows)
    dist = head_distances(decoder_layers(tp_model)[2], cache.hidden[2], cache.kwargs)
    assert nb04.plot_head_grouping(dist, hg.head_perm, hg.mlp_perm, hg.mlp_scores, layer.partition).data[:4] == PNG


# ---- notebook 05 ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded():
    return nb05.recorded_rows()


def sweep_rows(tp=4):
    """Accuracy rows as spd_ref.evaluation.sweep writes them: two tasks, two strategies, three ratios."""
    acc = {("zs", 0.0): (0.8, 0.6), ("zs", 0.5): (0.78, 0.6), ("zs", 1.0): (0.5, 0.5),
           ("hg", 0.0): (0.8, 0.6), ("hg", 0.5): (0.8, 0.59), ("hg", 1.0): (0.7, 0.55)}
    ppl = {0.0: 100.0, 0.5: 150.0, 1.0: 1000.0}
    return [dict(tp=tp, strategy=s, spd_ratio=r, task=t, metric="acc", value=v) for (s, r), vs in acc.items()
            for t, v in zip(("a", "b"), vs)] + [dict(tp=tp, kind="sensitivity", block=0, relative=0.1)] + \
        [dict(tp=tp, strategy=s, spd_ratio=r, task="w", metric="word_perplexity",
              value=ppl[r] * (2 if s == "zs" else 1)) for s, r in acc]


def test_recorded_rows_are_measurements(recorded):
    assert recorded and not any(r.get("prediction") for r in recorded)
    assert {r["gpu"] for r in recorded} == {"NVIDIA H100 80GB HBM3"}


def test_latency_saving_matches_the_measured_table(recorded):
    # 7B, TP 4, NVLink, batch 1 (results/h100/README.md): 3.573 ms baseline, 2.968 ms with SPD on every block
    assert nb05.latency_saving(recorded, 1.0) == pytest.approx(1 - 2.9685 / 3.5726, abs=1e-3)
    assert nb05.latency_saving(recorded, 0.0) == 0.0
    half = (nb05.latency_saving(recorded, 0.25) + nb05.latency_saving(recorded, 0.5)) / 2
    assert nb05.latency_saving(recorded, 0.375) == pytest.approx(half)  # linear between measured ratios
    assert nb05.latency_saving(recorded, 1.0, p2p=False) > nb05.latency_saving(recorded, 1.0)
    with pytest.raises(ValueError, match="tp=8"):
        nb05.latency_saving(recorded, 0.5, tp=8)


def test_accuracy_table_and_frontier(recorded):
    table, columns = nb05.accuracy_table(sweep_rows())
    assert [c for c, _ in columns] == ["tp", "strategy", "0.00", "0.50", "1.00"]
    assert table[0]["strategy"] == "hg" and table[0]["1.00"] == pytest.approx(0.625)
    points = {(p["strategy"], p["ratio"]): p for p in nb05.frontier(recorded, sweep_rows() + sweep_rows(tp=3))}
    assert len(points) == 6  # TP 4 only
    assert points[("zs", 1.0)]["accuracy_drop_smollm2"] == pytest.approx(0.2)
    assert points[("zs", 0.5)]["word_ppl"] == 300.0 and points[("hg", 1.0)]["word_ppl_ratio"] == pytest.approx(10.0)
    assert points[("hg", 0.5)]["latency_saving_7b"] == pytest.approx(nb05.latency_saving(recorded, 0.5))
    assert nb05.plot_frontier(list(points.values())).data[:4] == PNG


def test_operating_point_and_its_views(recorded):
    from spd_ref.latency.commcost import load_rows

    current = current_rows(recorded)
    cost = nb01.fit_cost_model(current, "llama2-7b", batch=1)
    preds = load_rows([str(nb05.RESULTS / "predictions" / "tp8.jsonl")])
    point = functools.partial(nb05.operating_point, cost, 18.0, recorded, preds, sweep_rows())
    p = point(tp=4, busbw_gbps=300, ratio=0.45)
    assert p["model_saving"] == pytest.approx(cost.predict(4, 300, 18.0, 0.45)["saving"])
    assert p["recorded_saving"] == pytest.approx(nb05.latency_saving(recorded, 0.45))
    assert p["recorded_source"] == "measured TP 4 P2P on"
    assert p["acc_ratio"] == 0.5 and p["acc_drop"] == pytest.approx(0.005)
    assert point(tp=4, busbw_gbps=25, ratio=1.0)["recorded_source"] == "measured TP 4 P2P off"
    eight = point(tp=8, busbw_gbps=300, ratio=0.7)
    assert eight["recorded_source"].startswith("PREDICTION")
    assert eight["recorded_saving"] == pytest.approx(0.174, abs=0.002)  # results/predictions/README.md: 17.4%
    none = nb05.operating_point(cost, 18.0, recorded, [], [], tp=3, busbw_gbps=300, ratio=0.5)
    assert none["recorded_saving"] is None and none["acc_drop"] is None
    assert nb05.plot_operating(point).data[:4] == PNG
    widget = nb05.explorer(point)
    assert [c.description for c in widget.children[:-1]] == ["SPD ratio", "TP degree", "bus GB/s"]
