"""spd_ref.latency.bench (+ peer, plots): rows with every schema field, on 2 gloo processes."""
from __future__ import annotations

import json
import time

import pytest
import torch

from spd_ref.latency import bench, workload
from spd_ref.latency.schema import ROW_FIELDS, make_row
from spd_ref.latency.timing import summarize, us_per_call
from spd_ref.launch import launch


# ---- pure functions --------------------------------------------------------------------------------
def test_spread_blocks_rule() -> None:
    assert workload.spread_blocks(0, 32) == [] and workload.spread_blocks(1, 32) == list(range(32))
    assert workload.spread_blocks(0.5, 8) == [1, 3, 5, 7]
    for layers in (4, 32, 40, 80):
        for ratio in (0.25, 0.5, 0.75):
            blocks = workload.spread_blocks(ratio, layers)
            assert len(blocks) == int(ratio * layers + 0.5) and len(set(blocks)) == len(blocks)
            assert all(0 <= b < layers for b in blocks) and blocks == sorted(blocks)
    with pytest.raises(ValueError, match="outside"):
        workload.spread_blocks(1.5, 8)


def test_plan_picks_the_least_sensitive_blocks(tmp_path) -> None:
    from spd_ref.plan import BlockRecord, Plan, save_plan

    scores = [0.5, 0.1, 0.9, 0.2]
    records = [BlockRecord(block=i, sensitivity=s, relative=s / 10, block_class="in-sensitive", strategy="zs",
                           chosen=False) for i, s in enumerate(scores)]
    plan = Plan(model_id="tiny", tp_degree=2, num_blocks=4, signature={}, fingerprint=[0.0, 0.0], base_ppl=10.0,
                spd_blocks=[], blocks=records, settings={})
    folder = save_plan(plan, tmp_path / "plan")
    assert workload.blocks_for_ratio(0.5, 4, str(folder)) == [1, 3]
    assert workload.blocks_for_ratio(0.75, 4, str(folder)) == [0, 1, 3]
    with pytest.raises(ValueError, match="is for 4 blocks"):
        workload.blocks_for_ratio(0.5, 8, str(folder))


def test_llama_shapes_are_the_public_ones() -> None:
    c7, c13, c70 = (workload.llama_config(s) for s in ("llama2-7b", "llama2-13b", "llama2-70b"))
    assert (c7.hidden_size, c7.num_hidden_layers, c7.num_attention_heads, c7.num_key_value_heads,
            c7.intermediate_size, c7.vocab_size) == (4096, 32, 32, 32, 11008, 32000)
    assert (c13.hidden_size, c13.num_hidden_layers, c13.num_attention_heads, c13.intermediate_size) == \
        (5120, 40, 40, 13824)
    assert (c70.hidden_size, c70.num_hidden_layers, c70.num_attention_heads, c70.num_key_value_heads,
            c70.intermediate_size) == (8192, 80, 64, 8, 28672)
    assert workload.llama_config("llama2-70b", layers=2).num_hidden_layers == 2
    with pytest.raises(ValueError, match="unknown shape 'gpt'"):
        workload.llama_config("gpt")


def test_parse_list_and_summary() -> None:
    assert workload.parse_list("1,16", int) == [1, 16]
    assert workload.parse_list("16K,1M", int) == [16384, 1 << 20]
    assert workload.parse_list("nccl,ring,oneshot", str) == ["nccl", "ring", "oneshot"]  # no suffix on words
    assert workload.parse_list("none") == []
    med, p90 = summarize([float(i) for i in range(1, 11)])
    assert med == 5.5 and p90 == 9.0
    with pytest.raises(KeyError, match="not in the schema"):
        make_row({}, kind="decode", colour="red")


def test_us_per_call_times_each_call_of_the_list() -> None:
    """The kernel microbenchmarks' timer: every call runs in each timed pass, and the time is per call."""
    ran = []

    def call() -> None:
        ran.append(1)
        time.sleep(0.002)

    us = us_per_call([call] * 3, torch.device("cpu"), repeats=4)
    assert len(ran) == 3 * (1 + 1 + 4)  # graph warm-up, timing warm-up, the timed passes
    assert 2000 <= us < 20000


def test_one_process_measures_only_the_baseline(tmp_path) -> None:
    # Without torchrun: world size 1, no communication, so no SPD or floor variants; cli returns.
    out = tmp_path / "one.jsonl"
    code = bench.cli(["--shape", "tiny", "--batch", "1", "--prompt-lens", "none", "--ctx", "8", "--no-comm",
                      "--repeats", "2", "--warmup", "1", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and len(rows) == 1
    assert rows[0]["tp"] == 1 and rows[0]["spd_ratio"] == 0 and rows[0]["sync_points_per_token"] == 0


def test_shard_of_times_one_shard_without_communication(tmp_path) -> None:
    """--shard-of 4: one process holds rank 0's quarter of the model and measures only the floor."""
    out = tmp_path / "shard.jsonl"
    code = bench.cli(["--shape", "tiny", "--batch", "1", "--prompt-lens", "4", "--ctx", "8", "--shard-of", "4",
                      "--lm-head", "replicated", "--repeats", "2", "--warmup", "1", "--prefill-repeats", "1",
                      "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and [r["kind"] for r in rows] == ["prefill", "decode"]
    for r in rows:
        assert r["tp"] == 4 and r["shard_proxy"] is True and r["no_comm"] is True and r["spd_ratio"] is None
        assert r["lm_head"] == "replicated" and r["gpu_count"] == 0 and r["sync_points_per_token"] == 0


def test_shard_of_needs_one_process() -> None:
    from spd_ref.tp import TPContext

    alone, pair = (TPContext(0, n, 0, torch.device("cpu"), None) for n in (1, 2))
    assert bench.shard_context(alone, 4).world_size == 4 and bench.shard_context(alone, 4).group is None
    with pytest.raises(ValueError, match="one process"):
        bench.shard_context(pair, 4)
    with pytest.raises(ValueError, match="at least 1"):
        bench.shard_context(alone, 0)


# ---- 2 gloo processes ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tp2_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tp2.jsonl"
    done = launch(2, ["bench", "--shape", "tiny", "--batch", "1,2", "--prompt-lens", "8", "--ctx", "16",
                      "--spd-ratios", "0,0.5,1", "--no-comm", "--repeats", "3", "--warmup", "1",
                      "--prefill-repeats", "2", "--ar-bench", "--ar-sizes", "4K,64K", "--ar-repeats", "2",
                      "--tag", "test", "--out", str(out)], cpu=True, timeout_s=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return out, [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow
def test_rows_are_well_formed(tp2_rows) -> None:
    _, rows = tp2_rows
    kinds = [r["kind"] for r in rows]
    # 2 all-reduce sizes; per batch (2): prefill at 0, 1 and the floor, decode at 0, 0.5, 1 and the floor.
    assert kinds.count("allreduce") == 2 and kinds.count("prefill") == 6 and kinds.count("decode") == 8
    for r in rows:
        assert set(r) == set(ROW_FIELDS)
        assert r["tp"] == 2 and r["p2p"] is True and r["gpu"] == "cpu" and r["gpu_count"] == 0
        assert r["torch"] and r["date"] and r["dtype"] == "bfloat16" and r["tag"] == "test"
        assert 0 < r["ms_median"] <= r["ms_p90"]
        assert r["nccl"] is None and r["compiled"] is False  # CPU: eager, no NCCL
    for r in rows:
        if r["kind"] == "allreduce":
            assert r["bytes"] in (4096, 65536) and r["busbw_gbps"] > 0 and r["ranks_agree"] is True
        else:
            assert r["shape"] == "tiny" and r["layers"] == 4 and r["hidden"] == 64 and r["bytes"] is None
            assert r["lm_head"] == "split" and r["shard_proxy"] is None and r["compile_mode"] is None
            assert r["attention"] == "auto" and len(r["ms_median_ranks"]) == 2  # the default; slowest rank's times
            assert r["ms_median"] == pytest.approx(max(r["ms_median_ranks"]), abs=1e-4)


@pytest.mark.slow
def test_spd_drops_sync_points_and_the_floor_is_flagged(tp2_rows) -> None:
    _, rows = tp2_rows
    decode = [r for r in rows if r["kind"] == "decode" and r["batch"] == 1]
    by_ratio = {r["spd_ratio"]: r for r in decode if not r["no_comm"]}
    assert by_ratio[0.0]["sync_points_per_token"] == 8  # 4 blocks x 2
    assert by_ratio[0.5]["sync_points_per_token"] == 6 and by_ratio[0.5]["spd_blocks"] == [1, 3]
    assert by_ratio[1.0]["sync_points_per_token"] == 4 and by_ratio[1.0]["spd_blocks"] == [0, 1, 2, 3]
    assert all(r["ranks_agree"] is True for r in by_ratio.values())  # TP outputs are replicated
    floor = [r for r in decode if r["no_comm"]]
    assert len(floor) == 1 and floor[0]["spd_ratio"] is None and floor[0]["sync_points_per_token"] == 0
    assert floor[0]["ranks_agree"] is None  # without communication the ranks differ: not checked
    assert all(r["sync_bytes"] == 1 * 64 * 2 for r in decode)
    prefill = [r for r in rows if r["kind"] == "prefill" and r["batch"] == 2]
    assert all(r["prompt_len"] == 8 and r["sync_bytes"] == 2 * 8 * 64 * 2 for r in prefill)


@pytest.mark.slow
def test_plots_write_pngs(tp2_rows) -> None:
    from spd_ref.latency.plots import plot_results

    src, _ = tp2_rows
    made = plot_results(str(src))
    assert [p.name for p in made] == ["tp2_decode.png", "tp2_allreduce.png"]
    for p in made:
        assert p.parent == src.parent and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


@pytest.mark.slow
def test_peer_baseline_transformers_tp_plan_on_gloo(tmp_path) -> None:
    from spd_ref.latency.peer import make_checkpoint

    folder = make_checkpoint("tiny", str(tmp_path / "ckpt"))
    out = tmp_path / "peer.jsonl"
    done = launch(2, ["--shape", "tiny", "--checkpoint", str(folder), "--batch", "1", "--ctx", "16",
                      "--compile", "off", "--repeats", "3", "--warmup", "1", "--out", str(out)],
                  module="spd_ref.latency.peer", cpu=True, timeout_s=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1
    r = rows[0]
    assert set(r) == set(ROW_FIELDS)
    assert r["impl"] == "transformers_tp_plan" and r["kind"] == "decode" and r["tp"] == 2
    assert r["compiled"] is False and r["ranks_agree"] is True and r["sync_points_per_token"] == 8
