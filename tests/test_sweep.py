"""The sweep's bookkeeping (model-free): recovery per class, averages, the 1-point rule, the report."""
from spd_ref.calibration.sensitivity import BlockClass
from spd_ref.evaluation.sweep import average_accuracy, largest_ratio_within, recovery, report


def rows_for(strategy, accs_by_ratio, ppl=100.0):
    return [{"tp": 4, "strategy": strategy, "spd_ratio": r, "task": t, "metric": "acc", "value": v}
            for r, accs in accs_by_ratio.items() for t, v in zip("ab", accs)] + \
           [{"tp": 4, "strategy": strategy, "spd_ratio": r, "task": "w", "metric": "word_perplexity", "value": ppl}
            for r in accs_by_ratio]


def test_recovery_by_strategy_and_class():
    assert recovery("zs", BlockClass.EXTREME) == "zs" and recovery("random", BlockClass.SENSITIVE) == "zs"
    assert recovery("b2b", BlockClass.EXTREME) == "b2b" and recovery("b2b", BlockClass.INSENSITIVE) == "zs"
    assert recovery("hg", BlockClass.EXTREME) == "hg+b2b" and recovery("hg", BlockClass.SENSITIVE) == "b2b"


def test_largest_ratio_within_one_point():
    rows = rows_for("zs", {0.0: (0.80, 0.60), 0.5: (0.79, 0.60), 1.0: (0.70, 0.50)})
    assert abs(average_accuracy(rows)[(4, "zs", 0.5)] - 0.695) < 1e-12
    assert largest_ratio_within(rows) == {(4, "zs"): 0.5}  # 0.5 point lost at 0.5, 10 points at 1.0
    text = report(rows)
    assert "| 4 | zs | 0.50 | 0.695 | 100.0 |" in text and "| 4 | zs | 0.50 |" in text.split("largest")[1]
