import pytest

from spd_ref.partition import make_partition


def check_cover(p, heads, kv, inter):
    q = [h for s in p.shards for h in s.q_heads]
    assert q == list(range(heads))  # every query head once, contiguous, in rank order
    cols = [c for s in p.shards for c in s.mlp_cols]
    assert cols == list(range(inter))
    sizes = [len(s.q_heads) for s in p.shards]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    group = heads // kv
    for s in p.shards:  # a rank holds exactly the KV heads its query heads read
        assert list(s.kv_heads) == sorted({h // group for h in s.q_heads})


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_smollm2_gqa_split(n):
    check_cover(make_partition(n, 9, 3, 1536), 9, 3, 1536)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_llama2_mha_split(n):
    p = make_partition(n, 32, 32, 11008)
    check_cover(p, 32, 32, 11008)
    assert all(s.kv_heads == s.q_heads for s in p.shards)


def test_gqa_fewer_kv_heads_than_ranks_replicates_kv():
    p = make_partition(4, 9, 3, 1536)
    assert [len(s.q_heads) for s in p.shards] == [3, 2, 2, 2]
    assert [list(s.kv_heads) for s in p.shards] == [[0], [1], [1, 2], [2]]  # KV heads 1, 2 on two ranks


@pytest.mark.parametrize("n, match", [(10, "at most 9"), (0, "positive integer"), (-2, "positive integer")])
def test_bad_tp_degree_names_value_and_fix(n, match):
    with pytest.raises(ValueError, match=match) as err:
        make_partition(n, 9, 3, 1536)
    assert str(n) in str(err.value)
