"""Notebook 02 (building the SPD block): one decoder block cut into its ranks' pieces, the block output
under TP, SPD and the naive drop, the two WRONG SPD variants of METHOD.md s.2 (they exist only to show
those pitfalls; nothing else in the package uses them), and exactness and per-block error checks.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from spd_ref.block import BlockMode, MlpShards, block_residual
from spd_ref.hf import RankPartialsOProj, SimulatedTPLayer, apply_tp, decoder_layers, random_model, remove_tp
from spd_ref.notebooks.figures import as_image, new_figure
from spd_ref.partition import Partition, partition_for_config


def random_llama(bias: bool = False, seed: int = 0, layers: int = 2, heads: int = 4, hidden: int = 64):
    """A small multi-head LlamaForCausalLM with random weights; biases and norms perturbed so every
    term of the block equations is exercised."""
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, head_dim=hidden // heads,
                         vocab_size=256, attention_bias=bias, mlp_bias=bias, max_position_embeddings=256)
    return random_model(config, seed)


@dataclass
class BlockPieces:
    """One decoder block on one input, cut into its N ranks' pieces (METHOD.md s.1)."""

    x: torch.Tensor               # (B, T, d) the block input X, replicated on every rank
    attn_partials: torch.Tensor   # (N, B, T, d) Y_i = A_i W_O^(i), o_proj bias excluded
    mlp_shards: MlpShards         # (N, B, T, d) normed inputs -> each rank's MLP_i, down bias excluded
    norm2: Callable[[torch.Tensor], torch.Tensor]
    o_bias: Optional[torch.Tensor]
    down_bias: Optional[torch.Tensor]
    output: torch.Tensor          # the unmodified block's output on x: the reference
    partition: Partition


@torch.no_grad()
def block_pieces(model, ids: torch.Tensor, block: int, tp_degree: int) -> BlockPieces:
    """Run the (unpatched) model on `ids` and cut block `block` into `tp_degree` ranks' pieces. The
    attention itself (RoPE, causal mask) stays transformers' own: we take its output A before o_proj."""
    layer = decoder_layers(model)[block]
    if isinstance(layer, SimulatedTPLayer):
        raise RuntimeError("block_pieces needs the original model. Fix: spd_ref.hf.remove_tp(model) first")
    seen: dict = {}
    hooks = [layer.register_forward_pre_hook(lambda m, a, kw: seen.update(x=a[0]), with_kwargs=True),
             layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.update(a=a[0])),
             layer.register_forward_hook(lambda m, a, out: seen.update(out=out))]
    try:
        model(ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    part = partition_for_config(model.config, tp_degree)
    o_proj = RankPartialsOProj(layer.self_attn.o_proj, layer.self_attn.head_dim, part)
    # The package's own per-rank MLP (SimulatedTPLayer.mlp_shards), bound to this layer's weights.
    owner = SimpleNamespace(mlp=layer.mlp, partition=part)
    return BlockPieces(seen["x"], o_proj(seen["a"]), lambda z: SimulatedTPLayer.mlp_shards(owner, z),
                       layer.post_attention_layernorm, o_proj.bias, layer.mlp.down_proj.bias, seen["out"], part)


@torch.no_grad()
def block_output(p: BlockPieces, mode: BlockMode) -> torch.Tensor:
    """The block output under `mode`, from spd_ref.block (a sync point = a sum over the ranks)."""
    return block_residual(p.x, p.attn_partials, p.mlp_shards, p.norm2, sync=lambda t: t.sum(0), mode=mode,
                          o_bias=p.o_bias, down_bias=p.down_bias)


@torch.no_grad()
def _spd_with_pitfalls(p: BlockPieces, residual_on_every_rank: bool, bias_on_every_rank: bool) -> torch.Tensor:
    """SPD with each rank's contribution explicit. A flag adds that term on EVERY rank before the
    all-reduce, so the sum counts it N times; with both flags off this is the correct SPD block."""
    zero = torch.zeros_like(p.x)
    b = zero if p.o_bias is None else p.o_bias.expand_as(p.x)
    per_rank = p.attn_partials + p.mlp_shards(p.norm2(p.x + p.attn_partials + b))  # Y_i + Zh_i
    every = (p.x if residual_on_every_rank else zero) + (b if bias_on_every_rank else zero)
    once = (zero if residual_on_every_rank else p.x) + (zero if bias_on_every_rank else b)
    down = zero if p.down_bias is None else p.down_bias
    return (per_rank + every).sum(0) + once + down  # sum(0): the one all-reduce


def wrong_spd_residual_on_every_rank(p: BlockPieces) -> torch.Tensor:
    """WRONG (METHOD.md s.2 pitfall): every rank adds X before the all-reduce, so O gains (N-1) X."""
    return _spd_with_pitfalls(p, residual_on_every_rank=True, bias_on_every_rank=False)


def wrong_spd_bias_on_every_rank(p: BlockPieces) -> torch.Tensor:
    """WRONG (METHOD.md s.2 pitfall): every rank adds the o_proj bias b before the all-reduce: O gains (N-1) b."""
    return _spd_with_pitfalls(p, residual_on_every_rank=False, bias_on_every_rank=True)


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| (Frobenius)."""
    return float((got - ref).detach().norm() / ref.detach().norm())


@torch.no_grad()
def pitfall_table(p: BlockPieces) -> list[dict]:
    """Each way of dropping the attention sync, against TP: its relative error, and for the two
    wrong SPD variants how exactly they miss SPD by (N-1) X or (N-1) b."""
    n, tp, spd = p.attn_partials.shape[0], block_output(p, BlockMode.TP), block_output(p, BlockMode.SPD)
    naive = block_output(p, BlockMode.NAIVE)
    rows = [dict(variant="SPD", rel_err_vs_tp=relative_error(spd, tp)),
            dict(variant="naive drop (no re-wiring)", rel_err_vs_tp=relative_error(naive, tp))]
    for name, wrong, term in (("X on every rank", wrong_spd_residual_on_every_rank, p.x),
                              ("o_proj bias on every rank", wrong_spd_bias_on_every_rank, p.o_bias)):
        if term is not None:
            got = wrong(p)
            rows.append(dict(variant=name, rel_err_vs_tp=relative_error(got, tp),
                             max_abs_off_by_n_minus_1=float((got - spd - (n - 1) * term).abs().max())))
    return rows


@torch.no_grad()
def exactness_checks(model, ids: torch.Tensor, tp_degrees: Sequence[int] = (2, 4), rtol: float = 1e-5) -> list[dict]:
    """METHOD.md s.2's exact cases, as max |logits - original logits|: TP without SPD at each degree,
    and SPD on every block at N = 1. Exact means within float32 summation-order noise: at most
    `rtol` times the largest original logit."""
    ref = model(ids, use_cache=False).logits
    cases = [(f"TP at N={n}, no SPD block", n, []) for n in tp_degrees]
    cases.append(("N=1, SPD on every block", 1, range(len(decoder_layers(model)))))
    rows = []
    try:
        for name, n, blocks in cases:
            apply_tp(model, n, blocks)
            diff = float((model(ids, use_cache=False).logits - ref).abs().max())
            rows.append(dict(check=name, max_abs_diff=diff, exact=diff <= rtol * float(ref.abs().max())))
    finally:
        remove_tp(model)
    return rows


@torch.no_grad()
def block_errors(model, ids: torch.Tensor, tp_degree: int) -> list[dict]:
    """Per block: the relative error of its output under SPD and under the naive drop against TP,
    each block fed the input it gets in the TP model (so errors do not carry from block to block)."""
    from spd_ref.calibration.sensitivity import capture_block_inputs  # the calibration cache: every block's TP input

    apply_tp(model, tp_degree)
    try:
        cache = capture_block_inputs(model, ids, batch_size=len(ids), progress=False)
        out = []
        for i, layer in enumerate(decoder_layers(model)):
            row = dict(block=i)
            for mode in (BlockMode.SPD, BlockMode.NAIVE):
                layer.block_mode = mode
                got = layer(cache.hidden[i], **cache.kwargs)
                row[f"{mode.value}_rel_err"] = relative_error(got, cache.hidden[i + 1])  # block i's TP output
            out.append(row)
        return out
    finally:
        remove_tp(model)


def plot_block_errors(errors: list[dict]):
    """Bars: relative error of each block's output under SPD (and the naive drop) against TP."""
    fig, ax = new_figure(figsize=(10, 3.2))
    blocks = np.array([e["block"] for e in errors])
    ax.bar(blocks - 0.2, [e["spd_rel_err"] for e in errors], width=0.4, label="SPD")
    ax.bar(blocks + 0.2, [e["naive_rel_err"] for e in errors], width=0.4, color="C3", alpha=0.6, label="naive drop")
    ax.set(xlabel="block", ylabel="||O - O_TP|| / ||O_TP||", yscale="log", xticks=blocks)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return as_image(fig)
