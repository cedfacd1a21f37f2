"""Load a model, and simulate tensor parallelism with SPD on a transformers LLaMA model in one process.

`apply_tp(model, N, spd_blocks)` patches a `LlamaForCausalLM` (or any model with its layer structure)
in place. Each decoder layer keeps its modules and parameter names (so `state_dict`, `generate()`
and lm-eval's HFLM work unchanged), but its forward runs the N ranks' shards explicitly and a sync
point becomes a sum over ranks (spd_ref.block). The attention itself (RoPE, KV cache, masks) is
still transformers' own: only o_proj is replaced, by a module that returns each rank's partial.

Two ways to run the ranks, the same equations: `fast=True` (the default) runs a TP block as the
original layer (a sum over ranks of row-parallel partials is the full matmul, so this is exact up to
the order of float sums) and an SPD block's N shards as one batched matmul each (shards padded with
zero columns to a common width, which adds exact zeros); `fast=False` loops over the ranks one by one,
the form that reads like METHOD.md s.2. tests/test_simulated.py checks that the two agree.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from spd_ref.block import BlockMode, block_residual, mlp_partial
from spd_ref.partition import Partition, partition_for_config


def random_model(config, seed: int = 0) -> nn.Module:
    """A LlamaForCausalLM-like model of `config` with random weights, biases and norms perturbed too,
    so that every term of the block equations is exercised (tests, notebooks)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


class RankPartialsOProj(nn.Module):
    """o_proj as N row-parallel shards: returns the stacked partials P_i = A_i W_O^(i), bias excluded.

    It owns the original `weight` and `bias` Parameters under the same names, so checkpoints and
    optimizers see the model unchanged; the block adds the bias once (METHOD.md s.2, Biases).
    """

    def __init__(self, linear: nn.Linear, head_dim: int, partition: Partition):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.columns = [range(s.q_heads.start * head_dim, s.q_heads.stop * head_dim) for s in partition.shards]
        index = padded_index(self.columns, self.weight.shape[1], self.weight.device)
        self.register_buffer("column_index", index, persistent=False)
        self.mode = "ranks"  # "ranks": stacked partials, rank by rank; "batched": the same, one matmul
        # per rank in a batch; "whole": the plain o_proj (bias included), for a TP block run as the original layer

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        if self.mode == "whole":
            return F.linear(attn, self.weight, self.bias)
        if self.mode == "batched":  # one (tokens x width) @ (width x d) matmul per rank
            a = take_columns(attn, self.column_index).flatten(1, -2)  # (R, B*T, width)
            out = a @ take_columns(self.weight, self.column_index).transpose(-1, -2)
            return out.view(-1, *attn.shape[:-1], out.shape[-1])
        return torch.stack([F.linear(attn[..., c.start:c.stop], self.weight[:, c.start:c.stop])
                            for c in self.columns])

    def as_linear(self) -> nn.Linear:
        linear = nn.Linear(self.weight.shape[1], self.weight.shape[0], bias=self.bias is not None,
                           device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear


def padded_index(ranges: list[range], total: int, device: torch.device) -> torch.Tensor:
    """(R, width) column indices of each rank's range, short ranges padded with `total` (a zero column)."""
    width = max(len(r) for r in ranges)
    return torch.tensor([list(r) + [total] * (width - len(r)) for r in ranges], device=device)


def take_columns(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Each rank's columns of t's last axis, stacked: (..., C) -> (R, ..., width); padding reads zeros."""
    padded = F.pad(t, (0, 1))
    return padded[..., index].movedim(-2, 0)


class SimulatedTPLayer:
    """Mixin that replaces a decoder layer's forward with the N-rank block of spd_ref.block.

    `apply_tp` swaps each layer's class for a subclass of (this, original class): the layer object,
    its modules and its parameters stay as they were, and `isinstance` checks in transformers (output
    capture, gradient checkpointing) still see a decoder layer.
    """

    partition: Partition
    block_mode: BlockMode
    fast: bool
    mlp_index: torch.Tensor

    def mlp_shards(self, x: torch.Tensor) -> torch.Tensor:
        """Each rank's MLP partial (R, B, T, d), rank by rank."""
        mlp = self.mlp
        outs = []
        for shard, xi in zip(self.partition.shards, x):
            c = slice(shard.mlp_cols.start, shard.mlp_cols.stop)
            outs.append(mlp_partial(xi, mlp.gate_proj.weight[c], mlp.up_proj.weight[c], mlp.down_proj.weight[:, c],
                                    mlp.act_fn, _cut(mlp.gate_proj.bias, c), _cut(mlp.up_proj.bias, c)))
        return torch.stack(outs)

    def mlp_shards_batched(self, x: torch.Tensor) -> torch.Tensor:
        """The same as mlp_shards, each projection one batched matmul over the ranks."""
        mlp, index = self.mlp, self.mlp_index
        tokens = x.flatten(1, -2)  # (R, B*T, d): one (tokens x d) @ (d x width) matmul per rank

        def project(linear: nn.Linear) -> torch.Tensor:  # column-parallel: each rank's output rows
            bias = linear.bias
            weight = take_columns(linear.weight.T, index)  # (R, d, width)
            return tokens @ weight if bias is None else torch.baddbmm(take_columns(bias, index)[:, None], tokens, weight)

        hidden = mlp.act_fn(project(mlp.gate_proj)) * project(mlp.up_proj)  # padded columns give 0
        out = hidden @ take_columns(mlp.down_proj.weight, index).transpose(-1, -2)  # (R, B*T, d)
        return out.view(x.shape)

    def attention_partials(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Each rank's attention partial P_i = A_i W_O^(i), o_proj bias excluded: (R, B, T, d)."""
        self.self_attn.o_proj.mode = "batched" if self.fast else "ranks"
        partials, _ = self.self_attn(self.input_layernorm(hidden_states), *args, **kwargs)
        return partials

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        o_proj = self.self_attn.o_proj
        if self.fast and self.block_mode is BlockMode.TP:
            o_proj.mode = "whole"  # the original layer: equal to the sum over ranks up to float order
            try:
                return super().forward(hidden_states, *args, **kwargs)
            finally:  # anyone else calling self_attn gets partials, as the docstring promises
                o_proj.mode = "batched"
        partials = self.attention_partials(hidden_states, *args, **kwargs)
        mlp_shards = self.mlp_shards_batched if self.fast else self.mlp_shards
        return block_residual(hidden_states, partials, mlp_shards, self.post_attention_layernorm,
                              sync=lambda t: t.sum(0), mode=self.block_mode,
                              o_bias=self.self_attn.o_proj.bias, down_bias=self.mlp.down_proj.bias)


def _cut(bias: Optional[torch.Tensor], cols: slice) -> Optional[torch.Tensor]:
    return None if bias is None else bias[cols]


_TP_CLASSES: dict[type, type] = {}


def _tp_class(base: type) -> type:
    if base not in _TP_CLASSES:
        _TP_CLASSES[base] = type(f"SimulatedTP{base.__name__}", (SimulatedTPLayer, base), {})
    return _TP_CLASSES[base]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", model)
    if not hasattr(inner, "layers"):
        raise TypeError(f"{type(model).__name__} has no .model.layers: spd_ref needs a LLaMA-style causal LM")
    return inner.layers


def apply_tp(model: nn.Module, tp_degree: int, spd_blocks: Iterable[int] = (),
             mode: BlockMode = BlockMode.SPD, fast: bool = True) -> nn.Module:
    """Simulate `tp_degree`-way TP on `model` in place; blocks in `spd_blocks` get `mode` (SPD).
    `fast=False` runs every block rank by rank (the module docstring says how the two differ)."""
    remove_tp(model)
    partition = partition_for_config(model.config, tp_degree)
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    for layer in decoder_layers(model):
        layer.self_attn.o_proj = RankPartialsOProj(layer.self_attn.o_proj, head_dim, partition)
        layer.self_attn.o_proj.mode = "batched" if fast else "ranks"
        layer.__class__ = _tp_class(type(layer))
        layer.partition, layer.fast = partition, fast
        mlp_cols = [s.mlp_cols for s in partition.shards]
        layer.register_buffer("mlp_index", padded_index(mlp_cols, partition.intermediate_size,
                                                                layer.mlp.down_proj.weight.device), persistent=False)
    model.tp_degree = tp_degree
    set_spd_blocks(model, spd_blocks, mode)
    return model


def set_spd_blocks(model: nn.Module, spd_blocks: Iterable[int], mode: BlockMode = BlockMode.SPD) -> None:
    """Choose which blocks drop their attention sync point (the rest stay plain TP)."""
    layers = decoder_layers(model)
    if not isinstance(layers[0], SimulatedTPLayer):
        raise RuntimeError("call apply_tp(model, tp_degree) before set_spd_blocks")
    chosen = validate_blocks(spd_blocks, len(layers))
    for i, layer in enumerate(layers):
        layer.block_mode = mode if i in chosen else BlockMode.TP


def validate_blocks(blocks: Iterable[int], num_blocks: int) -> set[int]:
    chosen = {int(b) for b in blocks}
    bad = sorted(b for b in chosen if not 0 <= b < num_blocks)
    if bad:
        raise ValueError(f"SPD block index {bad[0]} is out of range: this model has {num_blocks} blocks, "
                         f"numbered 0..{num_blocks - 1}. Fix: choose blocks in that range.")
    return chosen


def spd_blocks_of(model: nn.Module) -> list[int]:
    return [i for i, layer in enumerate(decoder_layers(model))
            if getattr(layer, "block_mode", BlockMode.TP) is not BlockMode.TP]


def remove_tp(model: nn.Module) -> nn.Module:
    """Undo apply_tp: the original layer classes and o_proj linears, same parameters."""
    for layer in decoder_layers(model):
        if isinstance(layer, SimulatedTPLayer):
            layer.__class__ = layer.__class__.__mro__[2]
            layer.self_attn.o_proj = layer.self_attn.o_proj.as_linear()
            del layer.partition, layer.block_mode, layer.fast, layer.mlp_index
    model.tp_degree = 1
    return model
