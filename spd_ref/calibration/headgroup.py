"""Head-grouping initialization (HG) for extremely sensitive blocks (METHOD.md s.5).

Under plain TP, which heads (and which MLP columns) sit on which rank does not change a block's
output: the sync points sum over all of them. Under SPD it does, because MLP shard i sees only
X + Y_i, the attention partial of rank i's heads. HG picks a better arrangement before B2B:

1. attention-probability map of every head on calibration inputs (computed from q and k);
2. [ours] balanced anti-clustering by greedy swaps: heads on one rank should be as different as
   possible (largest summed Euclidean distance between their maps). Ranks keep their sizes (the
   partition's), so the grouping stays balanced;
3. [ours] head groups matched to MLP shards by the Hungarian method on an N x N score matrix, the
   mean norm of MLP shard m's output when fed X + Y_a (the norm before the residual add);
4. the weights permuted accordingly (q/k/v rows and o_proj columns; gate/up rows and down_proj
   columns), which leaves plain TP exactly unchanged (`permute_block`).

[ours] On SmolLM2 the max-norm rule of step 3 picks the worst pairing on the most sensitive blocks
(its score correlates with the SPD block error; docs/calibration.md), so by default (rule="error")
steps 2-3 only propose candidates, the MLP pairing is also chosen by the block error
(spd_ref.calibration.pairing), and a candidate is applied only if it lowers the SPD block's error
against the TP block on the calibration inputs: HG cannot make that error worse.

Grouped-query attention: a query head must stay with its KV head. The allowed moves are
(a) swapping two whole KV groups (their query heads and their k/v rows) and (b) swapping two query
heads inside one KV group (k/v untouched). With multi-head attention (one query head per KV head)
(a) is any swap of two heads. Where the ranks' head ranges line up with KV groups (e.g. 9 heads, 3
KV heads, N = 3: one group per rank) no move changes which heads share a rank, and only the MLP
matching acts. With SmolLM2 at N = 4 (3/2/2/2 heads, groups of 3) groups straddle ranks, so both
moves change the grouping. MLP shards of unequal width cannot trade places ([ours] such pairs are
excluded from the matching).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from spd_ref.block import BlockMode
from spd_ref.calibration.distill import block_mse
from spd_ref.calibration.pairing import (EXHAUSTIVE_UP_TO, assign, best_columns, best_pairing, column_ranks,
                                        shard_output)
from spd_ref.partition import Partition

MAP_SAMPLES = 4  # [ours] calibration windows used for attention maps and MLP scores


@dataclass
class HeadGrouping:
    """What HG decided for one block: new position p holds old head `head_perm[p]`; rank a's MLP
    columns are old shard `mlp_perm[a]`'s. Distances are summed within-rank map distances;
    `mlp_scores` the max-norm scores of the chosen head order; `pairing` how the MLP pairing was
    chosen ("max-norm", "min-error", or "unchanged" when no candidate lowered the error); `candidates`
    every candidate with its block MSE against TP (None under the paper's rule, which scores none)."""

    head_perm: list[int]
    mlp_perm: list[int]
    distance_before: float
    distance_after: float
    mlp_scores: list[list[float]] = field(default_factory=list)
    rule: str = "paper"
    pairing: str = "max-norm"
    candidates: list[dict] = field(default_factory=list)
    mlp_columns_moved: int = 0  # rule "columns": intermediate columns now on another rank

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _heads(layer: nn.Module) -> tuple[int, int, int]:
    """(query heads, KV heads, head_dim) of a LLaMA attention module."""
    attn = layer.self_attn
    head_dim = attn.head_dim
    return attn.q_proj.weight.shape[0] // head_dim, attn.k_proj.weight.shape[0] // head_dim, head_dim


@torch.no_grad()
def head_distances(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """(H, H) Euclidean distances between the heads' attention-probability maps on `hidden` (n, T, d).

    A map is softmax(q k^T / sqrt(hd)) with the causal mask, (T, T) per window; a head's maps over
    the n windows are concatenated into one vector. One window at a time keeps memory at H * T^2.
    """
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = layer.self_attn
    num_heads, num_kv, head_dim = _heads(layer)
    cos, sin = kwargs["position_embeddings"]
    seq = hidden.shape[1]
    causal = torch.full((seq, seq), float("-inf")).triu(1)
    sq = torch.zeros(num_heads, num_heads, dtype=torch.float64)
    for x in hidden.split(1):
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(1, seq, num_heads, head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(1, seq, num_kv, head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos[:1], sin[:1])
        k = k.repeat_interleave(num_heads // num_kv, dim=1)  # query head j reads KV head j // group
        maps = torch.softmax(q @ k.transpose(-1, -2) * attn.scaling + causal, dim=-1)[0]
        sq += torch.cdist(maps.flatten(1), maps.flatten(1)).double() ** 2
    return sq.sqrt().float()


def within_rank_distance(dist: torch.Tensor, head_perm: list[int], partition: Partition) -> float:
    """Sum over ranks of the pairwise map distances of the heads each rank holds under `head_perm`."""
    total = 0.0
    for shard in partition.shards:
        held = [head_perm[p] for p in shard.q_heads]
        total += dist[held][:, held].sum().item() / 2
    return total


def _moves(num_heads: int, group: int) -> list[list[tuple[int, int]]]:
    """Allowed position swaps: whole KV groups (a list of pairs), or two heads inside one group."""
    num_kv = num_heads // group
    moves = [[(g1 * group + t, g2 * group + t) for t in range(group)]
             for g1 in range(num_kv) for g2 in range(g1 + 1, num_kv)]
    moves += [[(g * group + t1, g * group + t2)] for g in range(num_kv)
              for t1 in range(group) for t2 in range(t1 + 1, group)] if group > 1 else []
    return moves


def group_heads(dist: torch.Tensor, partition: Partition, max_rounds: int = 1000) -> list[int]:
    """[ours] Greedy swap anti-clustering: from the identity, apply the allowed swap that most raises
    the within-rank distance, until none does. Returns head_perm (position -> old head)."""
    num_heads = dist.shape[0]
    if num_heads != partition.num_heads:
        raise ValueError(f"distance matrix is {num_heads} x {num_heads} but the partition has "
                         f"{partition.num_heads} heads; compute both for the same model.")
    group = partition.num_heads // partition.num_kv_heads
    perm, best = list(range(num_heads)), within_rank_distance(dist, list(range(num_heads)), partition)
    for _ in range(max_rounds):
        found = None
        for move in _moves(num_heads, group):
            cand = list(perm)
            for a, b in move:
                cand[a], cand[b] = cand[b], cand[a]
            value = within_rank_distance(dist, cand, partition)
            if value > best * (1 + 1e-6) + 1e-9:  # not float noise from a reordered sum
                best, found = value, cand
        if found is None:
            break
        perm = found
    return perm


@torch.no_grad()
def mlp_match_scores(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """(N, N) scores: entry (a, m) is the mean token norm of MLP shard m's output on X + Y_a (+ o bias).

    `layer` must be under simulated TP (its o_proj returns per-rank partials Y_a).
    """
    n = layer.partition.tp_degree
    scores = torch.zeros(n, n)
    o_bias = layer.self_attn.o_proj.bias
    for x in hidden.split(1):
        partials = layer.attention_partials(x, **kwargs)
        normed = layer.post_attention_layernorm(x + partials + (0 if o_bias is None else o_bias))
        for a in range(n):
            for m in range(n):
                scores[a, m] += shard_output(layer, m, normed[a]).norm(dim=-1).mean() / hidden.shape[0]
    return scores


def match_mlp_shards(scores: torch.Tensor, partition: Partition) -> list[int]:
    """The paper's rule ([ours] Hungarian): the assignment maximizing the summed scores; rank a gets
    old MLP shard result[a]. Shards of unequal width cannot swap, so those pairs are forbidden."""
    return assign(scores, partition, maximize=True)


def _rows(perm: list[int], size: int) -> torch.Tensor:
    return torch.cat([torch.arange(p * size, (p + 1) * size) for p in perm])


@torch.no_grad()
def permute_block(layer: nn.Module, head_perm: list[int], mlp_perm: list[int], partition: Partition,
                  mlp_cols: list[int] | None = None) -> None:
    """Rearrange the block's weights in place: position p gets old head head_perm[p], rank a's MLP
    columns get old shard mlp_perm[a] (or, with `mlp_cols`, column position c gets old column
    mlp_cols[c]). Plain TP output is unchanged (up to float rounding)."""
    num_heads, num_kv, head_dim = _heads(layer)
    group = num_heads // num_kv
    if sorted(head_perm) != list(range(num_heads)):
        raise ValueError(f"head_perm={head_perm} is not a permutation of range({num_heads}).")
    kv_perm = [head_perm[g * group] // group for g in range(num_kv)]
    for g in range(num_kv):  # query heads must stay with their KV head (GQA)
        if any(head_perm[g * group + t] // group != kv_perm[g] for t in range(group)):
            raise ValueError(f"head_perm={head_perm} splits a KV group (group size {group}): positions "
                             f"{g * group}..{(g + 1) * group - 1} must hold the query heads of one KV head.")
    widths = [len(s.mlp_cols) for s in partition.shards]
    if sorted(mlp_perm) != list(range(len(widths))) or any(widths[a] != widths[m] for a, m in enumerate(mlp_perm)):
        raise ValueError(f"mlp_perm={mlp_perm} is not a permutation of equal-width shards (widths {widths}).")
    attn, mlp = layer.self_attn, layer.mlp
    q_rows, kv_rows = _rows(head_perm, head_dim), _rows(kv_perm, head_dim)
    cols = torch.cat([torch.arange(partition.shards[m].mlp_cols.start, partition.shards[m].mlp_cols.stop)
                      for m in mlp_perm]) if mlp_cols is None else torch.tensor(mlp_cols)
    if sorted(cols.tolist()) != list(range(mlp.gate_proj.weight.shape[0])):
        raise ValueError("mlp_cols is not a permutation of the MLP's intermediate columns.")
    for linear, rows in ((attn.q_proj, q_rows), (attn.k_proj, kv_rows), (attn.v_proj, kv_rows),
                         (mlp.gate_proj, cols), (mlp.up_proj, cols)):
        linear.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            linear.bias.copy_(linear.bias[rows])
    attn.o_proj.weight.copy_(attn.o_proj.weight[:, q_rows])  # biases of row-parallel layers stay put
    mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, cols])


RULES = ("columns", "error", "paper")
# [ours] "columns" (default): candidates (single MLP columns moved between ranks among them,
# pairing.best_columns) kept only if they lower the block error; "error": the same with whole MLP shards
# only; "paper": the max-norm rule, unconditional. Measured in results/recovery/README.md.
RULE = "columns"


@torch.no_grad()
def spd_error(layer: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, kwargs: dict[str, Any]) -> float:
    """MSE of `layer` run as an SPD block on `hidden` against `targets` (its mode is restored)."""
    was, layer.block_mode = layer.block_mode, BlockMode.SPD
    try:
        return block_mse(layer, hidden, targets, kwargs, batch_size=1)
    finally:
        layer.block_mode = was


@torch.no_grad()
def tp_outputs(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """The block's plain TP output on `hidden`: what HG's candidates are scored against."""
    was, layer.block_mode = layer.block_mode, BlockMode.TP
    try:
        return torch.cat([layer(x, **kwargs) for x in hidden.split(1)])
    finally:
        layer.block_mode = was


def _permuted(layer: nn.Module, head_perm: list[int], mlp_perm: list[int], mlp_cols=None) -> nn.Module:
    out = copy.deepcopy(layer)
    permute_block(out, head_perm, mlp_perm, layer.partition, mlp_cols)
    return out


@torch.no_grad()
def head_grouping(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any],
                  map_samples: int = MAP_SAMPLES, rule: str = RULE,
                  exhaustive_up_to: int = EXHAUSTIVE_UP_TO) -> HeadGrouping:
    """HG on one simulated-TP block, in place.

    rule="paper": group heads by their maps, then pair head groups with MLP shards by the max-norm
    rule, unconditionally. rule="error" ([ours]): those steps generate candidates (head
    order: as is, or anti-clustered; MLP pairing: the max-norm one, or the one with the lowest block
    error, pairing.best_pairing), each scored by the SPD block's MSE against the TP block on all of
    `hidden`; the best is applied only if it beats the block as it is, so HG never raises that error.
    rule="columns" ([ours], default): as "error", plus a candidate that moves single MLP columns
    between ranks (each to the rank where it deviates least from TP).

    `hidden` are the block's calibration inputs (n, T, d) and `kwargs` its layer-call arguments;
    [ours] the first `map_samples` windows give the attention maps and the max-norm scores.
    """
    if map_samples < 1:
        raise ValueError(f"map_samples={map_samples} must be >= 1 (calibration windows for the maps).")
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is unknown; use 'error' (ours: keep what lowers the block error), "
                         "'columns' (as error, single MLP columns may move too) or 'paper' (the max-norm MLP "
                         "matching, applied unconditionally).")
    partition: Partition = layer.partition
    maps = hidden[:map_samples]
    dist = head_distances(layer, maps, kwargs)
    identity, shards = list(range(partition.num_heads)), list(range(partition.tp_degree))
    grouped = group_heads(dist, partition)
    checked = rule != "paper"
    targets = tp_outputs(layer, hidden, kwargs) if checked else None
    candidates = []  # (head_perm, mlp_perm, how chosen, error or None, max-norm scores, column order or None)
    for head_perm in ([identity, grouped] if checked and grouped != identity else [grouped]):
        regrouped = _permuted(layer, head_perm, shards)
        scores = mlp_match_scores(regrouped, maps, kwargs)
        pairings = {"max-norm": (match_mlp_shards(scores, partition), None)}
        if checked:
            pairings["min-error"] = (best_pairing(regrouped, hidden, kwargs, exhaustive_up_to), None)
        if rule == "columns":
            pairings["min-error-columns"] = (shards, best_columns(regrouped, hidden, kwargs))
        for how, (mlp_perm, cols) in pairings.items():
            error = None
            if checked:
                error = spd_error(_permuted(regrouped, identity, mlp_perm, cols), hidden, targets, kwargs)
            candidates.append((head_perm, mlp_perm, how, error, scores, cols))
    chosen = candidates[0]
    if checked:
        before = spd_error(layer, hidden, targets, kwargs)
        best = min(candidates, key=lambda c: c[3])
        chosen = best if best[3] < before else (identity, shards, "unchanged", before, candidates[0][4], None)
    head_perm, mlp_perm, _, _, scores, cols = chosen
    permute_block(layer, head_perm, shards, partition)
    permute_block(layer, identity, mlp_perm, partition, cols)
    ranks = column_ranks(partition)
    moved = 0 if cols is None else int((ranks != ranks[cols]).sum())
    return HeadGrouping(head_perm, mlp_perm, within_rank_distance(dist, identity, partition),
                        within_rank_distance(dist, head_perm, partition), scores.tolist(), rule, chosen[2],
                        [{"head_perm": c[0], "mlp_perm": c[1], "pairing": c[2], "mse": c[3]} for c in candidates],
                        moved)
