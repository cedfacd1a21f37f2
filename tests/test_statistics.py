"""Paired bootstrap intervals of accuracy drops (spd_ref.evaluation.statistics) on synthetic data
whose true drop is known."""
import numpy as np
import pytest

from spd_ref.evaluation.statistics import Drop, paired_drop, projected_half_width, rows_drop


def paired_items(rng, n: int, acc: float, flip_down: float, flip_up: float) -> tuple[np.ndarray, np.ndarray]:
    """Items right before with probability acc; after, a right item turns wrong with flip_down and a
    wrong one right with flip_up (SPD mostly keeps the same answers: strongly paired)."""
    before = (rng.random(n) < acc).astype(float)
    u = rng.random(n)
    after = np.where(before == 1, u >= flip_down, u < flip_up).astype(float)
    return before, after


def true_drop(acc: float, flip_down: float, flip_up: float) -> float:
    return acc * flip_down - (1 - acc) * flip_up


def test_interval_covers_the_true_drop_about_95_percent():
    """Coverage over 300 synthetic studies of two tasks: a 95% interval must cover the true drop in
    roughly 95% of them (binomial sd at 300 is 1.3%: the 90%..99% window fails a broken interval)."""
    rng = np.random.default_rng(1)
    tasks = {"a": (400, 0.7, 0.06, 0.02), "b": (250, 0.85, 0.04, 0.10)}
    truth = np.mean([true_drop(*p[1:]) for p in tasks.values()])
    covered = 0
    for study in range(300):
        pairs = {t: paired_items(rng, *p) for t, p in tasks.items()}
        d = paired_drop({t: b for t, (b, _) in pairs.items()}, {t: a for t, (_, a) in pairs.items()},
                        iters=1000, seed=study)
        covered += d.low <= truth <= d.high
    assert 0.90 <= covered / 300 <= 0.99


def test_pairing_is_narrower_than_independent_errors():
    rng = np.random.default_rng(2)
    before, after = paired_items(rng, 1000, 0.7, 0.03, 0.03)
    d = paired_drop({"t": before}, {"t": after})
    unpaired_halfwidth = 1.96 * np.sqrt(2 * 0.7 * 0.3 / 1000)  # two independent binomial errors
    assert (d.high - d.low) / 2 < 0.6 * unpaired_halfwidth
    assert d.drop == pytest.approx(before.mean() - after.mean())


def test_identical_scores_give_a_zero_width_interval_and_items_are_counted():
    x = np.array([1, 0, 1, 1, 0], dtype=float)
    d = paired_drop({"t": x, "u": x[:3]}, {"t": x, "u": x[:3]})
    assert (d.drop, d.low, d.high, d.n_items) == (0.0, 0.0, 0.0, 8)


def test_within_one_point_reads_the_upper_bound():
    assert Drop(0.002, -0.004, 0.009, 1000).within(1.0)
    assert not Drop(0.002, -0.004, 0.011, 1000).within(1.0)  # point inside, interval not: not shown


def test_unpaired_input_is_refused():
    with pytest.raises(ValueError, match="same items"):
        paired_drop({"t": [1, 0, 1]}, {"t": [1, 0]})
    with pytest.raises(ValueError, match="same tasks"):
        paired_drop({"t": [1]}, {"u": [1]})


def test_rows_drop_reads_evaluation_rows():
    before = [{"task": "t", "metric": "acc", "items": [1, 1, 1, 1]}, {"task": "t", "metric": "acc_norm", "items": [0] * 4}]
    after = [{"task": "t", "metric": "acc", "items": [1, 0, 1, 0]}, {"task": "t", "metric": "acc_norm", "items": [0] * 4}]
    d = rows_drop(before, after)
    assert d.drop == pytest.approx(0.5) and 0.0 <= d.low <= 0.5 <= d.high <= 1.0


def test_projected_half_width_matches_the_bootstrap_and_shrinks_with_items():
    rng = np.random.default_rng(3)
    before = {t: (rng.random(n) < 0.7).astype(float) for t, n in (("a", 400), ("b", 200))}
    after = {t: np.where(rng.random(len(v)) < 0.1, 1 - v, v) for t, v in before.items()}  # 10% of items flip
    d = paired_drop(before, after, iters=4000)
    now = projected_half_width(before, after, {"a": 400, "b": 200})
    assert now == pytest.approx((d.high - d.low) / 2, rel=0.08)  # the normal approximation of the bootstrap
    assert projected_half_width(before, after, {"a": 1600, "b": 800}) == pytest.approx(now / 2)
    # a task whose items are used up caps it: more of the other one alone cannot halve it
    assert projected_half_width(before, after, {"a": 10 ** 9, "b": 200}) > 0.75 * now
    with pytest.raises(ValueError, match="sizes must name every task"):
        projected_half_width(before, after, {"a": 400})


def test_material_counts_what_the_offline_tasks_can_build():
    from spd_ref.evaluation.tasks import material

    assert material() == {"spd_analogy": 19544, "spd_polarity": 200, "spd_lambada": 255, "spd_hellaswag": 492}
