"""Decode attention: the library kernel, spelled out for the compiler, FlexAttention, or our split-KV
Triton kernel (`attention(..., impl)`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from spd_ref.kernels import splitkv

ATTENTION_IMPLS = ("sdpa", "math", "flex", "triton", "auto")
# [ours] "auto": on one H200 the 7B TP-2 shard's batch-1 floor was faster with it than with sdpa in 5 of 6
# alternated pairs (2.6% at ctx 512 and 2048), and equal at batch 16 (results/h200_attention/README.md).
DEFAULT_ATTENTION = "auto"


def check(impl: str) -> None:
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention {impl!r}: unknown. Fix: use one of {', '.join(ATTENTION_IMPLS)}")


def prepare(impl: str) -> None:
    """Check impl; register the kernel's torch op (outside any compile) for "triton", and for "auto" where
    it can run (a CUDA device; a CPU-only install needs no triton). TPTransformer calls this when its
    `attention` is set."""
    check(impl)
    if impl == "triton" or (impl == "auto" and torch.cuda.is_available()):
        splitkv.prepare()


def resolve(impl: str, q: torch.Tensor) -> str:
    """The implementation a call runs: "auto" is "triton" for one query row on a GPU, else "sdpa"."""
    if impl != "auto":
        return impl
    return "triton" if q.is_cuda and q.shape[0] * q.shape[2] == 1 else "sdpa"


def attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
              impl: str = DEFAULT_ATTENTION) -> torch.Tensor:
    """Softmax attention of q (B, Hq, T, hd) over the cache (B, Hkv, S, hd); query head h reads KV
    head h // (Hq / Hkv); mask (1, 1, T, S) is True where a key may be read.

    "sdpa" calls the library kernel. "math" spells it out (fp32 scores and softmax, as the fused
    kernels compute internally) so the compiler generates and fuses its own kernels: for one decode
    token the library kernel's fixed cost and its mask preparation can outweigh the arithmetic.
    "flex" is torch's FlexAttention with the mask read inside the kernel (a score_mod, so no block mask
    is built per step); compiled, inductor writes it as a split-KV decoding kernel for short queries.
    Uncompiled it runs torch's reference path (slow; the CPU tests use it). On H200 the TP-2 shard floor
    was 1 ms slower with it than with sdpa (results/h200_x2_gemv/README.md).
    "triton" is spd_ref.kernels.splitkv's split-KV kernel for half-precision queries of at most
    splitkv.MAX_TOKENS tokens (decode); longer or fp32 queries go to sdpa. "auto" [ours, the default] is
    "triton" for one query row (batch 1, one token) on a GPU and "sdpa" otherwise: on H200 the kernel was
    faster than sdpa at batch 1 and slower at batch 16 (results/h200_attention/README.md).
    """
    check(impl)
    impl = resolve(impl, q)
    if impl == "triton" and q.shape[2] <= splitkv.MAX_TOKENS and q.dtype in (torch.bfloat16, torch.float16):
        return splitkv.decode_attention(q, keys, values, mask)
    if impl in ("sdpa", "triton"):
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                              enable_gqa=q.shape[1] != keys.shape[1])
    if impl == "flex":
        from torch.nn.attention.flex_attention import flex_attention

        def keep_allowed(score, b, h, q_idx, kv_idx):
            return torch.where(mask[0, 0, q_idx, kv_idx], score, float("-inf"))

        return flex_attention(q, keys, values, score_mod=keep_allowed, enable_gqa=q.shape[1] != keys.shape[1])
    b, hq, t, hd = q.shape
    n_kv, s = keys.shape[1], keys.shape[2]
    grouped = q.float().reshape(b, n_kv, hq // n_kv * t, hd)  # a KV head's query heads side by side
    scores = (grouped @ keys.float().transpose(-1, -2) * hd ** -0.5).view(b, n_kv, -1, t, s)
    probs = scores.masked_fill(~mask[:, :, None], float("-inf")).softmax(-1).view(b, n_kv, -1, s)
    return (probs @ values.float()).view(b, hq, t, hd).to(q.dtype)
