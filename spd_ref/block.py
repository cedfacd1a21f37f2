"""The tensor-parallel block and the SPD block, written once for both runtimes (METHOD.md s.1-2).

Tensors that differ per rank carry a leading rank axis R: the ranks this process holds. In the
simulated runtime one process holds all N ranks (R = N) and a sync point is a sum over that axis; in
the torchrun runtime a process holds one rank (R = 1) and a sync point is that sum followed by an
all-reduce. Either way `sync` maps (R, B, T, d) to the (B, T, d) total over all N ranks.
"""
from __future__ import annotations

from enum import Enum
from typing import Callable, Optional

import torch
import torch.nn.functional as F

Sync = Callable[[torch.Tensor], torch.Tensor]
MlpShards = Callable[[torch.Tensor], torch.Tensor]  # (R, B, T, d) normed input -> (R, B, T, d) partials


class BlockMode(str, Enum):
    """How a block synchronizes. TP: two sync points. SPD: one. NAIVE: the wrong way to drop one."""

    TP = "tp"
    SPD = "spd"
    NAIVE = "naive"


def _plus(x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return x if bias is None else x + bias


def block_residual(x: torch.Tensor, attn_partials: torch.Tensor, mlp_shards: MlpShards,
                   post_attention_norm: Callable[[torch.Tensor], torch.Tensor], sync: Sync,
                   mode: BlockMode = BlockMode.TP, o_bias: Optional[torch.Tensor] = None,
                   down_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The block output O given its input x (B, T, d) and each held rank's attention partial.

    `attn_partials` are the o_proj row-parallel partials P_i = A_i W_O^(i), WITHOUT the o_proj bias;
    `mlp_shards` returns each rank's down_proj partial WITHOUT the down_proj bias. Biases are
    replicated, so each is added exactly once, after the sync that would otherwise count it N times.
    """
    if mode is BlockMode.TP:
        # Sync point 1: H = X + sum_i P_i + b.  Sync point 2: O = H + sum_i MLP_i(Norm2(H)).
        h = _plus(x + sync(attn_partials), o_bias)
        z = mlp_shards(post_attention_norm(h).expand_as(attn_partials))
        return _plus(h + sync(z), down_bias)
    # Both SPD and the naive drop let MLP shard i see only its own attention partial:
    # [ours] with a bias, the input of MLP shard i is X + P_i + b (METHOD.md s.2, Biases).
    local = _plus(x + attn_partials, o_bias)
    z = mlp_shards(post_attention_norm(local))
    if mode is BlockMode.SPD:
        # O = X + AllReduce(P_i + Zh_i) + b + b_down: X and the biases once, after the one sync.
        return _plus(_plus(x + sync(attn_partials + z), o_bias), down_bias)
    # NAIVE: skip the attention all-reduce and keep the usual residual: rank i's stream becomes
    # X + P_i + b + sum_j Zh_j, so the other ranks' attention never reaches it and the ranks
    # disagree. The simulated runtime follows rank 0's stream (what rank 0 would compute next).
    return _plus(local[0] + sync(z), down_bias)


def mlp_partial(x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor,
                act: Callable[[torch.Tensor], torch.Tensor], gate_b: Optional[torch.Tensor] = None,
                up_b: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One rank's LLaMA MLP shard: column-parallel gate/up, row-parallel down, no down bias."""
    return F.linear(act(F.linear(x, gate_w, gate_b)) * F.linear(x, up_w, up_b), down_w)
