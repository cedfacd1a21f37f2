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


def test_summary_rows_average_and_perplexity():
    before = [{"task": "a", "metric": "acc", "value": 0.8}, {"task": "b", "metric": "acc", "value": 0.6},
              {"task": "w", "metric": "word_perplexity", "value": 100.0}]
    after = [{"task": "a", "metric": "acc", "value": 0.7}, {"task": "b", "metric": "acc", "value": 0.6},
             {"task": "w", "metric": "word_perplexity", "value": 110.0}]
    table = {label: (b, a) for label, b, a in summary_rows(before, after)}
    assert table["acc average"] == pytest.approx((0.7, 0.65))
    assert table["word ppl w"] == (100.0, 110.0)
