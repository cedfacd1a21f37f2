"""Which query heads, KV heads and MLP columns each of N tensor-parallel ranks holds (METHOD.md s.2).

[ours] Query heads are split as evenly as possible into contiguous runs (the first `H mod N` ranks
get one more). Each rank holds the KV heads its query heads read; with grouped-query attention and
fewer KV heads than ranks, a KV head shared by two ranks is replicated on both, as serving engines
do. MLP intermediate columns are split the same even, contiguous way.
"""
from __future__ import annotations

from dataclasses import dataclass


def even_ranges(total: int, parts: int) -> list[range]:
    """Split range(total) into `parts` contiguous runs whose lengths differ by at most one."""
    base, extra = divmod(total, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


@dataclass(frozen=True)
class RankShard:
    """What one rank holds: head indices and MLP column indices of the full model."""

    rank: int
    q_heads: range
    kv_heads: range
    mlp_cols: range


@dataclass(frozen=True)
class Partition:
    tp_degree: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    shards: tuple[RankShard, ...]

    def __getitem__(self, rank: int) -> RankShard:
        return self.shards[rank]


def make_partition(tp_degree: int, num_heads: int, num_kv_heads: int, intermediate_size: int) -> Partition:
    """The head and MLP split for `tp_degree` ranks. Raises ValueError when it cannot be split."""
    if not isinstance(tp_degree, int) or tp_degree < 1:
        raise ValueError(f"tp_degree={tp_degree!r} must be a positive integer (1 means no tensor parallelism)")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    if tp_degree > num_heads:
        raise ValueError(
            f"tp_degree={tp_degree} cannot split a model with {num_heads} attention heads: a rank would "
            f"hold no head. Use a tp_degree of at most {num_heads}.")
    if tp_degree > intermediate_size:
        raise ValueError(f"tp_degree={tp_degree} exceeds the MLP width {intermediate_size}; use fewer ranks")
    group = num_heads // num_kv_heads  # query heads per KV head
    shards = []
    for rank, (q, cols) in enumerate(zip(even_ranges(num_heads, tp_degree),
                                         even_ranges(intermediate_size, tp_degree))):
        kv = range(q.start // group, (q.stop - 1) // group + 1)
        shards.append(RankShard(rank, q, kv, cols))
    return Partition(tp_degree, num_heads, num_kv_heads, intermediate_size, tuple(shards))


def partition_for_config(config, tp_degree: int) -> Partition:
    """The partition of a transformers LlamaConfig-like config."""
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return make_partition(tp_degree, config.num_attention_heads, kv, config.intermediate_size)
