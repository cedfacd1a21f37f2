"""Which MLP shard each head group should feed under SPD, chosen by the block's error (METHOD.md s.5 [ours]).

Rank a holds head group a and MLP shard m(a). Under TP every shard m sees Norm2(H), H = X + sum_b Y_b
(+ o bias); under SPD shard m(a) sees Norm2(X + Y_a). The attention terms of the two outputs are the
same sum, so the SPD block's deviation from the TP block is exactly

    O_spd - O_tp = sum_a D[a, m(a)],   D[a, m] = MLP_m(Norm2(X + Y_a)) - MLP_m(Norm2(H)),

and one pass that computes the N x N deviations D scores every pairing: ||sum_a D[a, m(a)]||^2 summed
over tokens is N * d times the block MSE against TP. [ours] Up to EXHAUSTIVE_UP_TO ranks every
pairing is scored (5! = 120); beyond, a Hungarian assignment on the pairwise costs ||D[a, m]||^2
(the cross terms between ranks left out), which the caller still checks against the real error.
Shards of unequal width cannot trade places.

[ours] Under TP any split of the MLP's intermediate columns among the ranks is exact, so HG may also
move single columns: `best_columns` gives each column the rank where it deviates least (pairwise
costs, cross terms between columns left out; exact transport for N = 2, an assignment beyond), and
the caller keeps that arrangement only if it lowers the real block error.
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from spd_ref.block import mlp_partial
from spd_ref.partition import Partition

EXHAUSTIVE_UP_TO = 5  # [ours] score all N! pairings up to this N; assignment on pairwise costs beyond


def shard_output(layer: nn.Module, m: int, normed: torch.Tensor) -> torch.Tensor:
    """MLP shard m's down_proj partial (no down bias) on a normed input."""
    mlp, cols = layer.mlp, layer.partition.shards[m].mlp_cols
    c = slice(cols.start, cols.stop)
    gate_b, up_b = mlp.gate_proj.bias, mlp.up_proj.bias
    return mlp_partial(normed, mlp.gate_proj.weight[c], mlp.up_proj.weight[c], mlp.down_proj.weight[:, c],
                       mlp.act_fn, None if gate_b is None else gate_b[c], None if up_b is None else up_b[c])


@torch.no_grad()
def deviations(layer: nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """D (N, N, B, T, d) on inputs x (B, T, d); `layer` must be under simulated TP."""
    n = layer.partition.tp_degree
    partials = layer.attention_partials(x, **kwargs)
    o_bias = layer.self_attn.o_proj.bias
    bias = 0 if o_bias is None else o_bias
    tp_in = layer.post_attention_layernorm(x + partials.sum(0) + bias)
    local = layer.post_attention_layernorm(x + partials + bias)
    out = []
    for m in range(n):
        reference = shard_output(layer, m, tp_in)
        out.append(torch.stack([shard_output(layer, m, local[a]) - reference for a in range(n)]))
    return torch.stack(out, dim=1).float()  # out[m][a] -> D[a, m]


def allowed_pairings(partition: Partition) -> list[tuple[int, ...]]:
    """Every pairing (rank a -> old shard p[a]) that only swaps shards of equal width."""
    width = [len(s.mlp_cols) for s in partition.shards]
    return [p for p in itertools.permutations(range(partition.tp_degree))
            if all(width[a] == width[m] for a, m in enumerate(p))]


@torch.no_grad()
def pairing_errors(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> dict[tuple[int, ...], float]:
    """Block MSE against TP of every allowed pairing on `hidden` (n, T, d), one window at a time."""
    pairings = allowed_pairings(layer.partition)
    sums = dict.fromkeys(pairings, 0.0)
    for x in hidden.split(1):
        d = deviations(layer, x, kwargs)
        for p in pairings:
            sums[p] += sum(d[a, m] for a, m in enumerate(p)).square().sum().item()
    return {p: s / hidden.numel() for p, s in sums.items()}


@torch.no_grad()
def pairwise_costs(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """(N, N): entry (a, m) is ||D[a, m]||^2 per output element, the error of pairing a with m alone."""
    n = layer.partition.tp_degree
    cost = torch.zeros(n, n, dtype=torch.float64)
    for x in hidden.split(1):
        cost += deviations(layer, x, kwargs).square().sum(dim=(2, 3, 4)).double()
    return cost / hidden.numel()


def assign(cost: torch.Tensor, partition: Partition, maximize: bool = False) -> list[int]:
    """Hungarian assignment on an N x N matrix (rank a gets old shard result[a]); unequal widths forbidden."""
    width = [len(s.mlp_cols) for s in partition.shards]
    values = cost.double().numpy() * (-1 if maximize else 1)
    rows, cols = linear_sum_assignment(np.where(np.equal.outer(width, width), values, np.inf))
    return [int(c) for _, c in sorted(zip(rows, cols))]


def best_pairing(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any],
                 exhaustive_up_to: int = EXHAUSTIVE_UP_TO) -> list[int]:
    """[ours] The pairing with the lowest block error: exhaustive up to `exhaustive_up_to` ranks,
    Hungarian on the pairwise costs beyond."""
    if layer.partition.tp_degree <= exhaustive_up_to:
        errors = pairing_errors(layer, hidden, kwargs)
        return list(min(errors, key=errors.get))
    return assign(pairwise_costs(layer, hidden, kwargs), layer.partition)


@torch.no_grad()
def column_costs(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """(d_ff, N): entry (j, a) is what MLP column j adds to the squared block deviation when it sits on
    rank a, ||W_down[:, j]||^2 sum_t (h_j(Norm2(X + Y_a)) - h_j(Norm2(H)))^2 with h_j = act(gate_j) up_j
    (the deviations of different columns are taken as independent)."""
    mlp, n = layer.mlp, layer.partition.tp_degree
    o_bias = layer.self_attn.o_proj.bias
    bias = 0 if o_bias is None else o_bias

    def h(y: torch.Tensor) -> torch.Tensor:
        return mlp.act_fn(F.linear(y, mlp.gate_proj.weight, mlp.gate_proj.bias)) * F.linear(
            y, mlp.up_proj.weight, mlp.up_proj.bias)

    cost = torch.zeros(mlp.gate_proj.weight.shape[0], n, dtype=torch.float64)
    for x in hidden.split(1):
        partials = layer.attention_partials(x, **kwargs)
        reference = h(layer.post_attention_layernorm(x + partials.sum(0) + bias))
        local = layer.post_attention_layernorm(x + partials + bias)
        for a in range(n):
            cost[:, a] += (h(local[a]) - reference).double().square().sum(dim=(0, 1))
    return cost * mlp.down_proj.weight.double().square().sum(0)[:, None]


def column_ranks(partition: Partition) -> np.ndarray:
    """The rank that holds each MLP intermediate column position."""
    return np.concatenate([np.full(len(shard.mlp_cols), a) for a, shard in enumerate(partition.shards)])


def assign_columns(cost: torch.Tensor, partition: Partition) -> list[int]:
    """The column order with the lowest summed cost that keeps every rank's width: position p (in
    rank a's range) gets old column result[p]."""
    slot_rank = column_ranks(partition)  # the rank that owns each new position
    values = cost.numpy()
    if partition.tp_degree == 2:  # exact: the columns that gain most from rank 0 go there
        by_gain = np.argsort(values[:, 0] - values[:, 1], kind="stable")
        first = int((slot_rank == 0).sum())
        order = np.empty(len(slot_rank), dtype=int)
        order[slot_rank == 0], order[slot_rank == 1] = np.sort(by_gain[:first]), np.sort(by_gain[first:])
        return order.tolist()
    rows, slots = linear_sum_assignment(values[:, slot_rank])
    order = np.empty(len(slot_rank), dtype=int)
    order[slots] = rows
    return order.tolist()


def best_columns(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> list[int]:
    """[ours] MLP columns moved one by one to the rank where they deviate least (assign_columns)."""
    return assign_columns(column_costs(layer, hidden, kwargs), layer.partition)
