"""Sync points (spd_ref.tp): the all-reduce kinds, the floor's opaque no-op, and the consistency check
that bench applies to every decode row (spd_ref.latency.consistency)."""
import pytest
import torch
import torch.distributed as dist

from spd_ref.latency.consistency import check_row, consistent_group
from spd_ref.latency.workload import llama_config
from spd_ref.model import TPTransformer
from spd_ref.tp import TPContext, oneshot_unavailable, skip_sync


def row(ratio, ms, p90=None, kind="nccl"):
    floor = ratio is None
    return dict(no_comm=floor, spd_ratio=ratio, allreduce=None if floor else kind, ms_median=ms,
                ms_p90=ms if p90 is None else p90, consistent=None, consistency=None)


# ---- the consistency check -----------------------------------------------------------------------
def test_rows_that_agree_are_marked_consistent():
    group = [row(None, 2.6)]
    for r in (row(0.0, 3.5), row(0.5, 3.3), row(1.0, 3.0), row(0.0, 3.1, kind="oneshot"), row(1.0, 2.8, kind="oneshot")):
        group.append(check_row(r, group))
    assert group[0]["consistent"] is None  # the floor is judged through the rows after it
    assert all(r["consistent"] is True and r["consistency"] is None for r in group[1:])
    assert consistent_group(group)


def test_a_floor_slower_than_a_run_that_communicates_is_flagged():
    # The H200 record before this check: floor 3.267 ms above SPD 100% at 3.094 (p90 3.107).
    group = [row(None, 3.267, 3.270)]
    group.append(check_row(row(0.0, 3.753, 3.768), group))
    group.append(check_row(row(1.0, 3.094, 3.107), group))
    assert group[1]["consistent"] is True
    assert group[2]["consistent"] is False and "floor 3.267 ms is slower" in group[2]["consistency"]
    assert not consistent_group(group)


def test_spd_slower_than_its_own_baseline_is_flagged_within_its_kind_only():
    group = [row(None, 3.5)]
    group.append(check_row(row(0.0, 4.47, kind="nccl"), group))
    group.append(check_row(row(0.0, 4.02, 4.025, kind="oneshot"), group))
    group.append(check_row(row(1.0, 3.97, kind="nccl"), group))  # below nccl's 4.47: fine
    group.append(check_row(row(1.0, 4.33, kind="oneshot"), group))  # above oneshot's 4.02
    assert [r["consistent"] for r in group[1:]] == [True, True, True, False]
    assert "SPD 100% is slower than its baseline 4.020" in group[-1]["consistency"]


def test_a_median_inside_the_other_rows_spread_is_noise_not_a_contradiction():
    group = [row(None, 3.00, 3.02)]
    group.append(check_row(row(0.0, 2.99, 3.01), group))  # floor median 3.00 <= this row's p90 3.01
    assert group[1]["consistent"] is True
    lone = check_row(row(0.5, 3.0), [])  # nothing to compare with: left unmarked
    assert lone["consistent"] is None


# ---- all-reduce kinds ----------------------------------------------------------------------------
def test_oneshot_is_refused_where_symmetric_memory_cannot_run():
    assert oneshot_unavailable(TPContext(0, 2, 0, torch.device("cpu"), None)) == "one process has no group to reduce over"
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ctx = TPContext(0, 2, 0, torch.device("cpu"), dist.group.WORLD)  # a gloo group standing for 2 ranks
        assert "needs GPUs with NCCL, this run is cpu with gloo" in oneshot_unavailable(ctx)
        with pytest.raises(ValueError, match="--allreduce oneshot is not available here.*Fix: --allreduce nccl"):
            ctx.use_allreduce("oneshot", torch.float32)
        ctx.use_allreduce("auto", torch.float32)
        assert ctx.allreduce == "nccl" and not ctx.oneshot_buffers  # auto falls back, allocates nothing
        with pytest.raises(ValueError, match="all-reduce 'ring' is not known"):
            ctx.use_allreduce("ring")
    finally:
        dist.destroy_process_group()


# ---- the floor ----------------------------------------------------------------------------------
def test_the_floor_sync_is_the_local_partial():
    partials = torch.randn(1, 2, 3, 8)
    assert torch.equal(skip_sync(partials), partials[0])
    assert torch.equal(skip_sync(torch.randn(3, 2, 3, 8).fill_(1.0)), torch.full((2, 3, 8), 3.0))


@pytest.mark.slow
def test_the_compiled_floor_equals_the_eager_floor():
    """The floor's no-op is an opaque op under torch.compile (a fusion barrier, like an all-reduce):
    compiled blocks around it compute what the eager blocks compute."""
    ctx = TPContext(0, 2, 0, torch.device("cpu"), None)  # rank 0's shard of TP 2, no group: the floor
    model = TPTransformer.random(llama_config("tiny"), ctx, torch.float32, seed=0)
    model.set_spd_blocks([1, 3])
    model.comm = "none"
    ids, pos = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0)), torch.arange(8)
    model.setup_cache(2, 9)
    eager = [model(ids, pos), model(ids[:, -1:], torch.tensor([8]))]
    model.compile_blocks()
    model.setup_cache(2, 9)
    compiled = [model(ids, pos), model(ids[:, -1:], torch.tensor([8]))]
    for a, b in zip(eager, compiled):
        assert (a - b).abs().max() < 1e-4
