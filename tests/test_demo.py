"""The demo's pieces that do not need a model: the recorded latency it quotes, its summary table."""
import json

import pytest

from spd_ref.demo import RECORDED, recorded_saving, summary_rows


def test_recorded_saving_reads_the_committed_h100_sweep():
    got = recorded_saving(0.5)
    rows = [json.loads(line) for line in RECORDED.read_text().splitlines()]
    base = [r for r in rows if r["kind"] == "decode" and r["shape"] == "llama2-7b" and r["tp"] == 4 and r["p2p"]
            and r["batch"] == 1 and r["spd_ratio"] == 0.0 and not r.get("no_comm")]
    assert got["ratio"] == 0.5 and got["base_ms"] == base[0]["ms_median"]
    assert 0.0 < got["saving"] < recorded_saving(1.0)["saving"] < 0.5  # more SPD, more saved
    assert recorded_saving(0.5, RECORDED.with_name("missing.jsonl")) is None


def test_summary_rows_average_perplexity_and_paired_intervals():
    before = [{"task": "a", "metric": "acc", "value": 0.8, "items": [1] * 8 + [0] * 2},
              {"task": "b", "metric": "acc", "value": 0.6, "items": [1] * 6 + [0] * 4},
              {"task": "w", "metric": "word_perplexity", "value": 100.0}]
    after = [{"task": "a", "metric": "acc", "value": 0.7, "items": [1] * 7 + [0] * 3},
             {"task": "b", "metric": "acc", "value": 0.6, "items": [1] * 6 + [0] * 4},
             {"task": "w", "metric": "word_perplexity", "value": 110.0}]
    table = {label: rest for label, *rest in summary_rows(before, after)}
    assert table["acc average"][:2] == pytest.approx((0.7, 0.65))
    assert table["word ppl w"] == [100.0, 110.0, None]
    a, b, avg = table["acc a"][2], table["acc b"][2], table["acc average"][2]
    assert a.drop == pytest.approx(0.1) and 0.0 <= a.low <= a.drop <= a.high
    assert (b.drop, b.low, b.high) == (0.0, 0.0, 0.0)  # the same answers: no drop, no doubt
    assert avg.drop == pytest.approx(0.05) and avg.n_items == 20
