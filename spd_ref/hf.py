"""Load a model, and simulate tensor parallelism with SPD on a transformers LLaMA model in one process.

`apply_tp(model, N, spd_blocks)` patches a `LlamaForCausalLM` (or any model with its layer structure)
in place. Each decoder layer keeps its modules and parameter names (so `state_dict`, `generate()`
and lm-eval's HFLM work unchanged), but its forward runs the N ranks' shards explicitly and a sync
point becomes a sum over ranks (spd_ref.block). The attention itself (RoPE, KV cache, masks) is
still transformers' own: only o_proj is replaced, by a module that returns each rank's partial.
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

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        return torch.stack([F.linear(attn[..., c.start:c.stop], self.weight[:, c.start:c.stop])
                            for c in self.columns])

    def as_linear(self) -> nn.Linear:
        linear = nn.Linear(self.weight.shape[1], self.weight.shape[0], bias=self.bias is not None,
                           device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear


class SimulatedTPLayer:
    """Mixin that replaces a decoder layer's forward with the N-rank block of spd_ref.block.

    `apply_tp` swaps each layer's class for a subclass of (this, original class): the layer object,
    its modules and its parameters stay as they were, and `isinstance` checks in transformers (output
    capture, gradient checkpointing) still see a decoder layer.
    """

    partition: Partition
    block_mode: BlockMode

    def mlp_shards(self, x: torch.Tensor) -> torch.Tensor:
        mlp = self.mlp
        outs = []
        for shard, xi in zip(self.partition.shards, x):
            c = slice(shard.mlp_cols.start, shard.mlp_cols.stop)
            outs.append(mlp_partial(xi, mlp.gate_proj.weight[c], mlp.up_proj.weight[c], mlp.down_proj.weight[:, c],
                                    mlp.act_fn, _cut(mlp.gate_proj.bias, c), _cut(mlp.up_proj.bias, c)))
        return torch.stack(outs)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        partials, _ = self.self_attn(self.input_layernorm(hidden_states), *args, **kwargs)
        return block_residual(hidden_states, partials, self.mlp_shards, self.post_attention_layernorm,
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
             mode: BlockMode = BlockMode.SPD) -> nn.Module:
    """Simulate `tp_degree`-way TP on `model` in place; blocks in `spd_blocks` get `mode` (SPD)."""
    remove_tp(model)
    partition = partition_for_config(model.config, tp_degree)
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    for layer in decoder_layers(model):
        layer.self_attn.o_proj = RankPartialsOProj(layer.self_attn.o_proj, head_dim, partition)
        layer.__class__ = _tp_class(type(layer))
        layer.partition = partition
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
            del layer.partition, layer.block_mode
    model.tp_degree = 1
    return model
