"""HG (METHOD.md s.5) on small random LLaMA configs: multi-head, GQA with groups that straddle ranks
(SmolLM2's 9 heads / 3 KV heads at N = 4) and GQA aligned with ranks."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from spd_ref.block import BlockMode
from spd_ref.calibration.headgroup import (group_heads, head_distances, head_grouping, match_mlp_shards, permute_block,
                                          spd_error, tp_outputs, within_rank_distance)
from spd_ref.calibration.pairing import allowed_pairings, best_pairing, column_ranks, pairing_errors
from spd_ref.hf import apply_tp, decoder_layers
from spd_ref.partition import make_partition
from spd_ref.calibration.sensitivity import capture_block_inputs

# (heads, kv heads, tp degree): MHA, SmolLM2-like straddling GQA, GQA with 2 ranks per KV group.
CASES = [(8, 8, 4), (9, 3, 4), (8, 2, 4)]


def _model(heads: int, kv: int, n: int, seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=16 * heads, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=heads, num_key_value_heads=kv, head_dim=16)
    model = LlamaForCausalLM(cfg).eval()
    apply_tp(model, n)
    tokens = torch.randint(0, 128, (4, 24), generator=torch.Generator().manual_seed(seed))
    return model, capture_block_inputs(model, tokens, batch_size=2, progress=False)


def _outputs(layer, x, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    outs = []
    for mode in (BlockMode.TP, BlockMode.SPD):
        layer.block_mode = mode
        with torch.no_grad():
            outs.append(layer(x, **kwargs))
    return outs[0], outs[1]


@pytest.mark.parametrize("heads,kv,n", CASES)
def test_hg_keeps_tp_output_and_changes_spd_output(heads, kv, n):
    model, cache = _model(heads, kv, n)
    layer = decoder_layers(model)[1]
    x = cache.hidden[1]
    tp_before, spd_before = _outputs(layer, x, cache.kwargs)
    grouped = copy.deepcopy(layer)
    result = head_grouping(grouped, x, cache.kwargs, rule="paper")  # the paper's steps, unconditionally
    tp_after, spd_after = _outputs(grouped, x, cache.kwargs)
    scale = tp_before.abs().max().item()
    assert (tp_after - tp_before).abs().max().item() <= 1e-5 * scale  # exact up to float rounding
    assert (spd_after - spd_before).abs().max().item() >= 1e-3 * scale  # SPD sees another grouping
    assert result.head_perm != list(range(heads)) or result.mlp_perm != list(range(n))
    assert result.distance_after >= result.distance_before  # greedy swaps never lower the objective


def test_permutation_keeps_query_heads_with_their_kv_head():
    model, cache = _model(9, 3, 4)
    layer = copy.deepcopy(decoder_layers(model)[1])
    dist = head_distances(layer, cache.hidden[1], cache.kwargs)
    perm = group_heads(dist, layer.partition)
    assert sorted(perm) == list(range(9))
    for g in range(3):  # positions 3g..3g+2 hold the three query heads of one KV head
        assert len({perm[3 * g + t] // 3 for t in range(3)}) == 1
    with pytest.raises(ValueError, match="splits a KV group"):
        permute_block(layer, [0, 1, 3, 2, 4, 5, 6, 7, 8], [0, 1, 2, 3], layer.partition)
    with pytest.raises(ValueError, match="not a permutation"):
        permute_block(layer, [0] * 9, [0, 1, 2, 3], layer.partition)


def test_greedy_grouping_separates_similar_heads():
    # Heads 0-3 and 4-7 form two tight clusters: anti-clustering must put one of each on every rank.
    points = torch.tensor([[0.0]] * 4 + [[10.0]] * 4) + torch.arange(8.0)[:, None] * 1e-3
    dist = torch.cdist(points, points)
    partition = make_partition(4, 8, 8, 64)
    perm = group_heads(dist, partition)
    assert all({perm[2 * r] // 4, perm[2 * r + 1] // 4} == {0, 1} for r in range(4))
    assert within_rank_distance(dist, perm, partition) > 39.0  # 4 ranks x ~10 apart


def test_mlp_matching_is_the_best_assignment_and_skips_unequal_shards():
    scores = torch.tensor([[1.0, 5.0, 0.0], [4.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    assert match_mlp_shards(scores, make_partition(3, 3, 3, 99)) == [1, 0, 2]
    # Widths 34/33/33: shard 0 cannot trade places, so rank 0 keeps it despite the score of 5 for
    # shard 1; ranks 1 and 2 then keep theirs (1 + 3 beats 0 + 0).
    assert match_mlp_shards(scores, make_partition(3, 3, 3, 100)) == [0, 1, 2]


def test_aligned_gqa_leaves_heads_and_still_matches_mlp():
    # 9 heads, 3 KV heads, N = 3: each rank holds one whole KV group, so no head move changes which
    # heads share a rank; HG's grouping objective cannot change.
    model, cache = _model(9, 3, 3)
    layer = copy.deepcopy(decoder_layers(model)[1])
    result = head_grouping(layer, cache.hidden[1], cache.kwargs)
    assert result.distance_after == pytest.approx(result.distance_before, rel=1e-6)


@pytest.mark.parametrize("heads,kv,n", CASES)
def test_pairing_errors_equal_the_permuted_blocks_error(heads, kv, n):
    # The N x N deviation decomposition must give exactly the MSE of the block with that pairing.
    model, cache = _model(heads, kv, n)
    layer = decoder_layers(model)[1]
    x = cache.hidden[1]
    errors = pairing_errors(layer, x, cache.kwargs)
    assert set(errors) == set(allowed_pairings(layer.partition)) and len(errors) == 24
    for pairing, error in errors.items():
        permuted = copy.deepcopy(layer)
        permute_block(permuted, list(range(heads)), list(pairing), layer.partition)
        assert error == pytest.approx(spd_error(permuted, x, cache.hidden[2], cache.kwargs), rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("exhaustive_up_to, rule", [(5, "error"), (1, "error"), (5, "columns")])
@pytest.mark.parametrize("heads,kv,n", CASES)
def test_hg_never_raises_the_block_error(heads, kv, n, exhaustive_up_to, rule):
    for seed in range(3):
        model, cache = _model(heads, kv, n, seed)
        for l in range(2):
            layer = copy.deepcopy(decoder_layers(model)[l])
            x, y = cache.hidden[l], cache.hidden[l + 1]
            before = spd_error(layer, x, y, cache.kwargs)
            result = head_grouping(layer, x, cache.kwargs, exhaustive_up_to=exhaustive_up_to, rule=rule)
            after = spd_error(layer, x, y, cache.kwargs)
            assert after <= before * (1 + 1e-5)
            scored = [c["mse"] for c in result.candidates]
            if result.pairing == "unchanged":
                assert min(scored) >= before * (1 - 1e-5)
            else:  # the applied candidate is the best one scored, and the block now has its error
                assert after == pytest.approx(min(scored), rel=1e-4)


def test_error_pairing_is_the_exhaustive_minimum_and_rule_is_checked():
    model, cache = _model(9, 3, 4)
    layer = decoder_layers(model)[0]
    errors = pairing_errors(layer, cache.hidden[0], cache.kwargs)
    assert tuple(best_pairing(layer, cache.hidden[0], cache.kwargs)) == min(errors, key=errors.get)
    with pytest.raises(ValueError, match="rule='norm'"):
        head_grouping(copy.deepcopy(layer), cache.hidden[0], cache.kwargs, rule="norm")
    # Scoring is against the block's own TP output, which is the model's next activation.
    assert torch.allclose(tp_outputs(layer, cache.hidden[0], cache.kwargs), cache.hidden[1], atol=1e-5)


def _layout_cost(cost: torch.Tensor, partition, order: list[int]) -> float:
    """The summed pairwise cost of a column order: new position p belongs to the rank whose range holds it."""
    rank_of = column_ranks(partition)
    return sum(cost[j, rank_of[p]].item() for p, j in enumerate(order))


@pytest.mark.parametrize("n", [2, 3])
def test_column_assignment_is_optimal_for_its_costs(n):
    import itertools
    from types import SimpleNamespace

    from spd_ref.calibration.pairing import assign_columns

    widths = {2: [4, 2], 3: [2, 2, 2]}[n]  # unequal widths at N = 2: every rank keeps its own
    starts = [sum(widths[:a]) for a in range(n)]
    partition = SimpleNamespace(tp_degree=n, shards=[SimpleNamespace(mlp_cols=range(s, s + w))
                                                     for s, w in zip(starts, widths)])
    cost = torch.rand(6, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    total = lambda order: _layout_cost(cost, partition, order)
    order = assign_columns(cost, partition)
    assert sorted(order) == list(range(6))
    assert total(order) == pytest.approx(min(total(o) for o in itertools.permutations(range(6))), abs=1e-12)


@pytest.mark.parametrize("heads,kv,n", CASES)
def test_moving_columns_keeps_tp_and_lowers_the_pairwise_cost(heads, kv, n):
    from spd_ref.calibration.pairing import best_columns, column_costs

    model, cache = _model(heads, kv, n)
    layer = decoder_layers(model)[0]
    x = cache.hidden[0]
    order = best_columns(layer, x, cache.kwargs)
    cost = column_costs(layer, x, cache.kwargs)
    total = lambda o: _layout_cost(cost, layer.partition, o)
    assert total(order) <= total(list(range(len(order)))) + 1e-12
    moved = copy.deepcopy(layer)
    permute_block(moved, list(range(heads)), list(range(n)), layer.partition, order)
    assert torch.allclose(_outputs(moved, x, cache.kwargs)[0], _outputs(layer, x, cache.kwargs)[0], atol=1e-5)
    with pytest.raises(ValueError, match="mlp_cols is not a permutation"):
        permute_block(moved, list(range(heads)), list(range(n)), layer.partition, order[:-1] + order[:1])
