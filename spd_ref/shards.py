"""Which part of each transformers weight one TP rank holds, and how the runtime stores it.

The split is spd_ref.partition's (query heads, KV heads, MLP columns); here it becomes slices of
the HF tensors (`rank_slices`), q/k/v and gate/up fused into one matrix each (`fuse_block`), and
the vocabulary rows of a split lm_head (`vocab_shard`).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from spd_ref.partition import RankShard

WEIGHTS = ("input_norm", "q_w", "k_w", "v_w", "q_b", "k_b", "v_b", "o_w", "o_b",
           "post_norm", "gate_w", "up_w", "down_w", "gate_b", "up_b", "down_b")


def rank_slices(config, shard: RankShard) -> dict[str, tuple[int, slice]]:
    """For each block weight: (dim, slice) of the full HF tensor this rank holds; dim -1 = replicated."""
    hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q = slice(shard.q_heads.start * hd, shard.q_heads.stop * hd)
    kv = slice(shard.kv_heads.start * hd, shard.kv_heads.stop * hd)
    cols = slice(shard.mlp_cols.start, shard.mlp_cols.stop)
    return {"input_norm": (-1, None), "post_norm": (-1, None), "o_b": (-1, None), "down_b": (-1, None),
            "q_w": (0, q), "q_b": (0, q), "k_w": (0, kv), "k_b": (0, kv), "v_w": (0, kv), "v_b": (0, kv),
            "o_w": (1, q), "gate_w": (0, cols), "gate_b": (0, cols), "up_w": (0, cols), "up_b": (0, cols),
            "down_w": (1, cols)}


HF_NAMES = {"input_norm": "input_layernorm.weight", "post_norm": "post_attention_layernorm.weight",
            "q_w": "self_attn.q_proj.weight", "k_w": "self_attn.k_proj.weight", "v_w": "self_attn.v_proj.weight",
            "q_b": "self_attn.q_proj.bias", "k_b": "self_attn.k_proj.bias", "v_b": "self_attn.v_proj.bias",
            "o_w": "self_attn.o_proj.weight", "o_b": "self_attn.o_proj.bias",
            "gate_w": "mlp.gate_proj.weight", "up_w": "mlp.up_proj.weight", "down_w": "mlp.down_proj.weight",
            "gate_b": "mlp.gate_proj.bias", "up_b": "mlp.up_proj.bias", "down_b": "mlp.down_proj.bias"}


def vocab_shard(head: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rows [rank * n, (rank + 1) * n) of the head, n = ceil(V / world); the last shard is padded
    with zero rows to n (the all-gather needs equal pieces; the padding is cut off after it)."""
    n = -(-head.shape[0] // world)
    shard = head[rank * n:(rank + 1) * n]  # a view: no copy unless padded
    return F.pad(shard, (0, 0, 0, n - shard.shape[0])) if shard.shape[0] < n else shard


def fuse_block(block: dict) -> dict:
    """q/k/v and gate/up as one matrix each: one matmul launch instead of three (two) when decoding."""
    def cat(*names: str) -> Optional[torch.Tensor]:
        parts = [block.pop(n) for n in names]
        return None if parts[0] is None else torch.cat(parts)

    qkv_w, qkv_b = cat("q_w", "k_w", "v_w"), cat("q_b", "k_b", "v_b")
    gate_up_w, gate_up_b = cat("gate_w", "up_w"), cat("gate_b", "up_b")
    return dict(block, qkv_w=qkv_w, qkv_b=qkv_b, gate_up_w=gate_up_w, gate_up_b=gate_up_b)


def full_shapes(config) -> dict[str, tuple[int, ...]]:
    """The full (unsharded) shape of every block weight the config has (biases only where enabled)."""
    d, inter = config.hidden_size, config.intermediate_size
    hd = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    shapes = {"input_norm": (d,), "post_norm": (d,), "q_w": (q, d), "k_w": (kv, d), "v_w": (kv, d),
              "o_w": (d, q), "gate_w": (inter, d), "up_w": (inter, d), "down_w": (d, inter)}
    if getattr(config, "attention_bias", False):
        shapes.update(q_b=(q,), k_b=(kv,), v_b=(kv,), o_b=(d,))
    if getattr(config, "mlp_bias", False):
        shapes.update(gate_b=(inter,), up_b=(inter,), down_b=(d,))
    return shapes
