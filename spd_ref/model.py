"""The real tensor-parallel runtime: one rank's shard of a LLaMA model, run under torchrun.

gpt-fast style: plain tensors, a static KV cache, and a block function that is a pure function of
tensors, so `compile_blocks()` compiles it once per block mode for every layer (weights are arguments).
[ours] A whole-step graph compiled about 80 s per SPD pattern on 2 x H200 for no faster compute
(results/h200_x2/README.md). The block equations are spd_ref.block's, shared with the simulated
runtime; a sync point is `TPContext.sync`, or with `comm = "none"` the floor's opaque no-op.

[ours] The embedding is replicated on every rank. The lm_head is split by vocabulary rows
(`lm_head_mode = "split"`: each rank multiplies by V/N rows and one all-gather of the logits follows;
Megatron's vocab-parallel head) or replicated (`"replicated"`: every rank reads all V rows, no
collective). Either way the SPD-relevant collectives are the blocks' sync points; the head's
all-gather is the same for every SPD ratio.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from spd_ref.block import BlockMode, block_residual
from spd_ref.hf import validate_blocks
from spd_ref.kernels import attention as attention_kernels, gemv, rmsnorm
from spd_ref.kernels.attention import ATTENTION_IMPLS, DEFAULT_ATTENTION, attention  # noqa: F401 (for the CLIs)
from spd_ref.kernels.gemv import DEFAULT_LINEAR, LINEAR_IMPLS, linear  # noqa: F401 (LINEAR_IMPLS: CLIs)
from spd_ref.kernels.rmsnorm import DEFAULT_NORM, NORM_IMPLS, rms_norm  # noqa: F401 (NORM_IMPLS: CLIs)
from spd_ref.partition import partition_for_config
from spd_ref.shards import HF_NAMES, WEIGHTS, fuse_block, full_shapes, rank_slices, vocab_shard
from spd_ref.tp import TPContext, skip_sync

LM_HEAD_MODES = ("split", "replicated")
DEFAULT_LM_HEAD = "split"  # [ours] see the module docstring; measured in results/h100_x2/README.md
# torch.compile settings by name. max-autotune-no-cudagraphs also turns on inductor's coordinate-descent
# tuning, under which inductor rewrites every one-row matmul (a decode GEMV) as its own reduction kernel;
# max-autotune-no-cdt keeps them matmuls, autotuned between cuBLAS and Triton templates.
COMPILE_MODES = {"default": {}, "max-autotune-no-cudagraphs": {"mode": "max-autotune-no-cudagraphs"},
                 "max-autotune-no-cdt": {"options": {"max_autotune": True, "coordinate_descent_tuning": False}}}
# compile_blocks("auto"): (mode for calls of one token row, mode for more rows). [ours] On 2 x H200 the
# TP-2 floor of the 7B shape was 2.81 against 2.85 ms at batch 1 but 3.91 against 3.29 ms at batch 16
# (max-autotune against default, results/h200_x2_compute/README.md).
AUTO_COMPILE = ("max-autotune-no-cudagraphs", "default")


def compile_mode_for(mode: str, rows: int) -> str:
    """The COMPILE_MODES name that `mode` ("auto" or a name) compiles a call of `rows` token rows with."""
    return (AUTO_COMPILE[0] if rows == 1 else AUTO_COMPILE[1]) if mode == "auto" else mode


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def block_forward(x: torch.Tensor, w: dict, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  cos: torch.Tensor, sin: torch.Tensor, input_pos: torch.Tensor, mask: torch.Tensor,
                  mode: BlockMode, sync: Callable, act: Callable, eps: float, gqa: str,
                  kv_index: Optional[torch.Tensor], attn_impl: str = DEFAULT_ATTENTION,
                  linear_impl: str = DEFAULT_LINEAR, norm_impl: str = DEFAULT_NORM) -> torch.Tensor:
    """One block on one rank: x (B, T, d) -> block output (B, T, d); updates the KV cache in place.
    linear_impl: "torch" (F.linear) or "triton" (spd_ref.kernels.gemv for decode-sized inputs);
    norm_impl: "torch" or "triton" (spd_ref.kernels.rmsnorm, a kernel the compiler does not fuse)."""
    b, t, _ = x.shape
    hd, n_kv = k_cache.shape[-1], k_cache.shape[1]
    h = rms_norm(x, w["input_norm"], eps, norm_impl)
    qkv = linear(h, w["qkv_w"], w["qkv_b"], linear_impl).view(b, t, -1, hd).transpose(1, 2)
    q, k, v = qkv.split([qkv.shape[1] - 2 * n_kv, n_kv, n_kv], dim=1)
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    k_cache[:, :, input_pos] = k
    v_cache[:, :, input_pos] = v
    keys, values = k_cache, v_cache
    if gqa == "index":  # uneven GQA split: each local query head picks its KV head
        keys, values = keys.index_select(1, kv_index), values.index_select(1, kv_index)
    attn = attention(q, keys, values, mask, attn_impl)
    attn = attn.transpose(1, 2).reshape(b, t, -1)
    partial = linear(attn, w["o_w"], None, linear_impl)[None]  # (R=1, B, T, d): this rank's o_proj partial, no bias

    def mlp_shard(y: torch.Tensor) -> torch.Tensor:  # block.mlp_partial with gate/up in one matmul
        gate, up = linear(y, w["gate_up_w"], w["gate_up_b"], linear_impl).chunk(2, dim=-1)
        return linear(act(gate) * up, w["down_w"], None, linear_impl)

    return block_residual(x, partial, mlp_shard, lambda y: rms_norm(y, w["post_norm"], eps, norm_impl), sync,
                          mode, w["o_b"], w["down_b"])


class TPTransformer(nn.Module):
    """One rank's shard of a LLaMA-architecture causal LM (this process holds rank ctx.rank of N)."""

    def __init__(self, config, ctx: TPContext, blocks: list[dict], embed: torch.Tensor,
                 final_norm: torch.Tensor, lm_head: torch.Tensor):
        super().__init__()
        from transformers.activations import ACT2FN

        self.config, self.ctx = config, ctx
        self.partition = partition_for_config(config, ctx.world_size)
        shard = self.partition[ctx.rank]
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.blocks = [{k: (nn.Parameter(v, requires_grad=False) if v is not None else None)
                        for k, v in fuse_block(b).items()} for b in blocks]
        self._params = nn.ParameterList([p for b in self.blocks for p in b.values() if p is not None])
        self.embed, self.final_norm, self.lm_head = embed, final_norm, lm_head
        self.lm_head_shard = vocab_shard(lm_head, ctx.rank, ctx.world_size)
        self.lm_head_mode = DEFAULT_LM_HEAD  # checked by the setter below
        self.attention, self.linear, self.norm = DEFAULT_ATTENTION, DEFAULT_LINEAR, DEFAULT_NORM  # setters below
        self.act, self.eps = ACT2FN[config.hidden_act], config.rms_norm_eps
        group = config.num_attention_heads // self.partition.num_kv_heads
        kv_of_q = [h // group - shard.kv_heads.start for h in shard.q_heads]
        n_kv = len(shard.kv_heads)
        if kv_of_q == list(range(n_kv)) and n_kv == len(kv_of_q):
            self.gqa = "none"
        elif len(kv_of_q) % n_kv == 0 and kv_of_q == [i // (len(kv_of_q) // n_kv) for i in range(len(kv_of_q))]:
            self.gqa = "grouped"
        else:
            self.gqa = "index"
        self.kv_index = torch.tensor(kv_of_q, device=ctx.device)
        self.block_modes = [BlockMode.TP] * len(blocks)
        self.comm = "allreduce"
        self._block_fn_for_rows: Callable[[int], Callable] = lambda rows: block_forward
        self.caches: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, config, state_dict: dict, ctx: TPContext, dtype: torch.dtype = torch.float32,
                overrides: Optional[dict] = None) -> "TPTransformer":
        """Shard a full transformers state dict (plus an SPD plan's changed weights) for ctx.rank."""
        sd = dict(state_dict, **(overrides or {}))
        slices = rank_slices(config, partition_for_config(config, ctx.world_size)[ctx.rank])

        def take(key: str, dim: int, sl) -> Optional[torch.Tensor]:
            t = sd.get(key)
            if t is None:
                return None
            t = t if dim < 0 else t[(slice(None),) * dim + (sl,)]
            return t.to(device=ctx.device, dtype=dtype).contiguous()

        blocks = [{name: take(f"model.layers.{i}.{HF_NAMES[name]}", *slices[name]) for name in WEIGHTS}
                  for i in range(config.num_hidden_layers)]
        embed = take("model.embed_tokens.weight", -1, None)
        head = embed if config.tie_word_embeddings else take("lm_head.weight", -1, None)
        return cls(config, ctx, blocks, embed, take("model.norm.weight", -1, None), head)

    @classmethod
    def random(cls, config, ctx: TPContext, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> "TPTransformer":
        """Random weights of the right shapes, made directly on the device (for latency only).

        Shards differ per rank (seed + rank); replicated tensors (embedding, norms) are drawn from
        `seed` alone, so they are equal on every rank as they must be.
        """
        gen = torch.Generator(device=ctx.device).manual_seed(seed + ctx.rank)
        shared = torch.Generator(device=ctx.device).manual_seed(seed)
        slices = rank_slices(config, partition_for_config(config, ctx.world_size)[ctx.rank])
        shapes = full_shapes(config)
        std = 1 / math.sqrt(config.hidden_size)

        def rand(name: str) -> Optional[torch.Tensor]:
            if name not in shapes:
                return None
            shape = list(shapes[name])
            dim, sl = slices[name]
            if dim >= 0:
                shape[dim] = sl.stop - sl.start
            if name.endswith("norm"):
                return torch.ones(shape, device=ctx.device, dtype=dtype)
            g = shared if dim < 0 else gen  # replicated biases must match across ranks
            return (torch.randn(shape, generator=g, device=ctx.device, dtype=torch.float32) * std).to(dtype)

        blocks = [{name: rand(name) for name in WEIGHTS} for _ in range(config.num_hidden_layers)]
        embed = torch.randn(config.vocab_size, config.hidden_size, generator=shared, device=ctx.device).to(dtype)
        norm = torch.ones(config.hidden_size, device=ctx.device, dtype=dtype)
        return cls(config, ctx, blocks, embed, norm, embed)

    # ---- configuration ------------------------------------------------------------------------
    @property
    def lm_head_mode(self) -> str:
        """"split" (vocab-parallel head + one all-gather) or "replicated" (module docstring)."""
        return self._lm_head_mode

    @lm_head_mode.setter
    def lm_head_mode(self, mode: str) -> None:
        if mode not in LM_HEAD_MODES:
            raise ValueError(f"lm_head mode {mode!r} is not known. Fix: one of {', '.join(LM_HEAD_MODES)}")
        self._lm_head_mode = mode

    # The projections', the decode attention's and the norms' implementations, one of LINEAR_IMPLS /
    # ATTENTION_IMPLS / NORM_IMPLS (spd_ref.kernels); setting one checks it and registers its kernel's op
    # before any compile.
    linear = property(lambda self: self._linear, lambda self, impl: self._set_kernel("_linear", gemv.prepare, impl))
    norm = property(lambda self: self._norm, lambda self, impl: self._set_kernel("_norm", rmsnorm.prepare, impl))
    attention = property(lambda self: self._attention,
                         lambda self, impl: self._set_kernel("_attention", attention_kernels.prepare, impl))

    def _set_kernel(self, name: str, prepare: Callable[[str], None], impl: str) -> None:
        prepare(impl)
        setattr(self, name, impl)

    def set_spd_blocks(self, spd_blocks: Iterable[int], mode: BlockMode = BlockMode.SPD) -> None:
        chosen = validate_blocks(spd_blocks, len(self.blocks))
        self.block_modes = [mode if i in chosen else BlockMode.TP for i in range(len(self.blocks))]

    @property
    def sync_points_per_token(self) -> int:
        """All-reduces per forward pass: 2 per TP block, 1 per SPD block (0 without communication)."""
        if self.comm == "none" or self.ctx.world_size == 1:
            return 0
        return sum(2 if m is BlockMode.TP else 1 for m in self.block_modes)

    def compile_blocks(self, mode: str = "default") -> None:
        """torch.compile the block function (`mode`: a name of COMPILE_MODES, or "auto": AUTO_COMPILE's
        mode by the call's token rows); weights are inputs, so one compile serves all layers.

        It still compiles once per (block mode, sync function, batch, tokens per call): raise dynamo's
        recompile limit so a sweep over those never falls back to eager silently.
        """
        import torch._dynamo.config as dynamo_config

        if mode not in COMPILE_MODES and mode != "auto":
            raise ValueError(f"compile mode {mode!r}: unknown. Fix: use auto or one of {', '.join(COMPILE_MODES)}")
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(getattr(dynamo_config, name), 64))
        fns = {m: torch.compile(block_forward, fullgraph=True, dynamic=False, **COMPILE_MODES[m])
               for m in {compile_mode_for(mode, 1), compile_mode_for(mode, 2)}}
        self._block_fn_for_rows = lambda rows: fns[compile_mode_for(mode, rows)]

    def setup_cache(self, batch: int, max_seq_len: int) -> None:
        shard = self.partition[self.ctx.rank]
        dtype, dev = self.embed.dtype, self.ctx.device
        shape = (batch, len(shard.kv_heads), max_seq_len, self.head_dim)
        self.caches = [(torch.zeros(shape, dtype=dtype, device=dev), torch.zeros(shape, dtype=dtype, device=dev))
                       for _ in self.blocks]
        self.causal = torch.ones(max_seq_len, max_seq_len, dtype=torch.bool, device=dev).tril()
        cos, sin = _rope_table(self.config, max_seq_len, dev)
        self.rope = (cos.to(dtype), sin.to(dtype))

    # ---- running ------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) for tokens at positions input_pos (T,), which must follow the cache."""
        if not self.caches:
            raise RuntimeError("call setup_cache(batch, max_seq_len) before forward")
        x = F.embedding(input_ids, self.embed)
        cos, sin = self.rope[0][input_pos], self.rope[1][input_pos]
        mask = self.causal[input_pos][None, None]
        sync = skip_sync if self.comm == "none" else self.ctx.sync
        block_fn = self._block_fn_for_rows(x.shape[0] * x.shape[1])
        for w, (kc, vc), mode in zip(self.blocks, self.caches, self.block_modes):
            x = block_fn(x, w, kc, vc, cos, sin, input_pos, mask, mode, sync, self.act, self.eps,
                         self.gqa, self.kv_index, self.attention, self.linear, self.norm)
        return self._logits(rms_norm(x, self.final_norm, self.eps, self.norm))

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, V) on every rank. Split head without communication (the floor): this rank's
        (B, T, ceil(V/N)) slice only, timing only."""
        if self.lm_head_mode == "replicated" or self.ctx.world_size == 1:
            return linear(h, self.lm_head, None, self.linear)
        local = linear(h, self.lm_head_shard, None, self.linear)
        if self.comm == "none":
            return local
        return self.ctx.gather_last(local)[..., :self.lm_head.shape[0]]

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int,
                 forced_tokens: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Greedy decoding: (new tokens (B, n), [prefill logits, logits of each decode step]).

        With `forced_tokens` (B, n) the decode steps are fed those tokens instead of their own
        argmax (teacher forcing), so two runs can be compared step by step even where random
        weights make near-ties flip the argmax.
        """
        b, t = prompt_ids.shape
        self.setup_cache(b, t + max_new_tokens)
        pos = torch.arange(t, device=self.ctx.device)
        logits = [self(prompt_ids.to(self.ctx.device), pos)]
        tokens = [logits[-1][:, -1].argmax(-1, keepdim=True)]
        for step in range(max_new_tokens - 1):
            fed = tokens[-1] if forced_tokens is None else forced_tokens[:, step:step + 1].to(self.ctx.device)
            logits.append(self(fed, torch.tensor([t + step], device=self.ctx.device)))
            tokens.append(logits[-1][:, -1].argmax(-1, keepdim=True))
        return torch.cat(tokens, 1), logits


def _rope_table(config, max_seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for every position from transformers' own rotary embedding (any rope scaling)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rotary = LlamaRotaryEmbedding(config).to(device)
    pos = torch.arange(max_seq_len, device=device)[None]
    cos, sin = rotary(torch.zeros(1, device=device), pos)
    return cos[0], sin[0]
