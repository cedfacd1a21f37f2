"""Decode attention as a split-KV Triton kernel: the cache is cut into spans that run in parallel.

Why [ours]: at one decode token the library kernel (sdpa, with the boolean mask it gets the
memory-efficient kernel) runs one program per (batch, head) and walks the whole cache in it: 16 programs
for the 7B's TP-2 shard at batch 1, on a GPU of 132 SMs. A profile put it at about 10 us a layer
(0.33 ms of a 2.7 ms step) where its 4 MB of keys and values stream in about 1 us. Splitting the cache
into spans ("flash-decoding") gives every SM work; a second small kernel merges the spans' partial
softmaxes exactly (each span keeps its running max and sum).

Layout: program (b * Hkv + g, row tile, span) reads KV head g of batch b once for every query row it
serves: the GROUP query heads of that KV head times the T query tokens (row = j * T + t). One row
multiplies and sums; more rows use tl.dot on tiles of 16. The mask (T, S) is read per key, so any mask
works (causal rows, padding); keys it hides cost their bytes but no arithmetic.

`decode_attention(q, keys, values, mask)`: q (B, Hq, T, hd), keys/values (B, Hkv, S, hd), mask
(1, 1, T, S) bool. Through a torch.library triton_op, so a compiled block keeps it in its graph and CUDA
graph. Callers send only decode-sized queries (T <= MAX_TOKENS); kernels.attention does.
"""
from __future__ import annotations

import functools

import torch

from spd_ref.kernels.triton_env import interpreting, refuse_inside_compile, require_triton

MAX_TOKENS = 16  # [ours] query tokens per call the kernel is used for; prefill goes to sdpa
# Launch settings (BLOCK_S keys per step of a program, TARGET programs a call's spans aim at, num_warps,
# num_stages): the candidates scripts/attention_bench.py times; the first is the one used [ours: the fastest
# for the 7B TP-2 shard at batch 1, ctx 512 and 2048, on H200: 7.4 and 13.4 us a layer against sdpa's 11.9
# and 18.0 (results/h200_attention)]. Short steps and few warps won: a one-row program's product tile is
# BLOCK_S x hd, and at batch 1 the whole cache is a few MB, so the more programs in flight the better.
CONFIGS = ((16, 1024, 2, 2), (16, 512, 1, 2), (16, 2048, 2, 2), (16, 2048, 1, 2), (16, 1024, 1, 1),
           (16, 1024, 2, 1), (32, 1024, 2, 2), (32, 512, 4, 2), (64, 256, 4, 2), (64, 512, 4, 3))


@functools.lru_cache(maxsize=None)
def _kernels():
    triton, tl = require_triton("attention 'triton'", "attention 'sdpa'")

    @triton.jit
    def span_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, acc_ptr, m_ptr, l_ptr, T, S, M, GROUP, N_KV, SPAN, N_SPANS,
                    scale, sq_b, sq_h, sq_t, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, smask_t, so_b, so_h, so_t,
                    HD: tl.constexpr, HD_P2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr,
                    DIRECT: tl.constexpr, UPCAST: tl.constexpr):
        bg, tile, span = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        b, g = bg // N_KV, bg % N_KV
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        j, t = rows // T, rows % T
        d = tl.arange(0, HD_P2)
        row_ok, d_ok = rows < M, d < HD
        q = tl.load(q_ptr + b * sq_b + (g * GROUP + j)[:, None] * sq_h + t[:, None] * sq_t + d[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, HD_P2), tl.float32)
        start = span * SPAN
        end = tl.minimum(start + SPAN, S)
        for s0 in range(start, end, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            s_ok = s < end
            kv_ok = s_ok[:, None] & d_ok[None, :]
            k = tl.load(k_ptr + b * sk_b + g * sk_h + s[:, None] * sk_s + d[None, :], mask=kv_ok, other=0.0)
            v = tl.load(v_ptr + b * sv_b + g * sv_h + s[:, None] * sv_s + d[None, :], mask=kv_ok, other=0.0)
            if BLOCK_M == 1:
                scores = tl.sum(q.to(tl.float32)[:, None, :] * k.to(tl.float32)[None, :, :], axis=2)
            elif UPCAST:  # Triton's CPU interpreter multiplies bf16 tiles wrongly; fp32 tiles it gets right
                scores = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
            else:
                scores = tl.dot(q, tl.trans(k))
            allowed = tl.load(mask_ptr + t[:, None] * smask_t + s[None, :], mask=row_ok[:, None] & s_ok[None, :],
                              other=0) != 0
            scores = tl.where(allowed, (scores * scale).to(tl.float32), float("-inf"))  # a float scale may come as fp64
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key allowed yet: every weight is 0
            alpha = tl.exp(m_i - m_ref)
            p = tl.exp(scores - m_ref[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if BLOCK_M == 1:
                acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
            elif UPCAST:
                acc = tl.dot(p, v.to(tl.float32), acc * alpha[:, None], input_precision="ieee")
            else:
                acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
            m_i = m_new
        if DIRECT:  # the only span: normalise and write the output (acc_ptr is the output)
            o = acc / l_i[:, None]
            tl.store(acc_ptr + b * so_b + (g * GROUP + j)[:, None] * so_h + t[:, None] * so_t + d[None, :],
                     o.to(acc_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
        else:
            out = (bg * N_SPANS + span) * M + rows
            tl.store(acc_ptr + out[:, None] * HD + d[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])
            tl.store(m_ptr + out, m_i, mask=row_ok)
            tl.store(l_ptr + out, l_i, mask=row_ok)

    @triton.jit
    def merge_kernel(acc_ptr, m_ptr, l_ptr, o_ptr, T, M, GROUP, N_KV, N_SPANS, so_b, so_h, so_t,
                     HD: tl.constexpr, HD_P2: tl.constexpr, SPANS_P2: tl.constexpr):
        bg, row = tl.program_id(0), tl.program_id(1)
        b, g, j, t = bg // N_KV, bg % N_KV, row // T, row % T
        sp = tl.arange(0, SPANS_P2)
        d = tl.arange(0, HD_P2)
        at = (bg * N_SPANS + sp) * M + row
        m = tl.load(m_ptr + at, mask=sp < N_SPANS, other=float("-inf"))
        m_max = tl.max(m, axis=0)
        w = tl.exp(m - tl.where(m_max == float("-inf"), 0.0, m_max))  # a span with no allowed key weighs 0
        l_sum = tl.sum(w * tl.load(l_ptr + at, mask=sp < N_SPANS, other=0.0), axis=0)
        acc = tl.load(acc_ptr + at[:, None] * HD + d[None, :], mask=(sp < N_SPANS)[:, None] & (d < HD)[None, :],
                      other=0.0)
        o = tl.sum(w[:, None] * acc, axis=0) / l_sum
        tl.store(o_ptr + b * so_b + (g * GROUP + j) * so_h + t * so_t + d, o.to(o_ptr.dtype.element_ty), mask=d < HD)

    return triton, span_kernel, merge_kernel


def spans_for(batch: int, n_kv: int, tiles: int, s: int, config: tuple = CONFIGS[0]) -> tuple[int, int]:
    """(keys per span, spans): enough spans for about config's TARGET programs, each a whole number of BLOCK_S."""
    block_s, target = config[:2]
    blocks = -(-s // block_s)
    wanted = max(1, min(blocks, -(-target // (batch * n_kv * tiles))))
    span = -(-blocks // wanted) * block_s
    return span, -(-s // span)


def launch(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, config: tuple = CONFIGS[0],
           wrap=None) -> torch.Tensor:
    """Softmax(q K^T / sqrt(hd), masked) V with a CONFIGS setting; `wrap` is torch.library.wrap_triton inside
    the torch op. One span writes the output directly; more spans write partials that merge_kernel joins."""
    b, hq, t, hd = q.shape
    n_kv, s = keys.shape[1], keys.shape[2]
    same_cache = keys.shape == values.shape and keys.shape[0] == b and keys.shape[3] == hd
    if not same_cache or hq % n_kv or mask.shape != (1, 1, t, s):
        raise ValueError(f"decode_attention: q {tuple(q.shape)}, keys {tuple(keys.shape)}, values "
                         f"{tuple(values.shape)}, mask {tuple(mask.shape)} must be (B, Hq, T, hd), (B, Hkv, S, hd) "
                         "twice and (1, 1, T, S), with Hq a multiple of Hkv. Fix: pass the shapes "
                         "kernels.attention.attention takes")
    if q.stride(3) != 1 or keys.stride(3) != 1 or values.stride(3) != 1 or mask.stride(3) != 1:
        raise ValueError("decode_attention: q, keys, values and mask must be contiguous in their last dim. "
                         "Fix: .contiguous()")
    triton, span_kernel, merge_kernel = _kernels()
    rows = hq // n_kv * t
    block_m = 1 if rows == 1 else 16
    tiles = -(-rows // block_m)
    span, n_spans = spans_for(b, n_kv, tiles, s, config)
    block_s, _, warps, stages = config
    f32 = dict(dtype=torch.float32, device=q.device)
    out = torch.empty((b, hq, t, hd), dtype=q.dtype, device=q.device)
    direct = n_spans == 1
    acc = out if direct else torch.empty((b * n_kv, n_spans, rows, hd), **f32)
    m, l_ = (torch.empty((b * n_kv, n_spans, rows), **f32) for _ in range(2))  # unused when direct
    hd_p2 = triton.next_power_of_2(hd)
    (wrap(span_kernel) if wrap else span_kernel)[(b * n_kv, tiles, n_spans)](
        q, keys, values, mask, acc, m, l_, t, s, rows, hq // n_kv, n_kv, span, n_spans, hd ** -0.5,
        q.stride(0), q.stride(1), q.stride(2), keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2), mask.stride(2), out.stride(0), out.stride(1),
        out.stride(2), HD=hd, HD_P2=hd_p2, BLOCK_M=block_m, BLOCK_S=block_s, DIRECT=direct, UPCAST=interpreting(),
        num_warps=warps, num_stages=stages)
    if not direct:
        (wrap(merge_kernel) if wrap else merge_kernel)[(b * n_kv, rows)](
            acc, m, l_, out, t, rows, hq // n_kv, n_kv, n_spans, out.stride(0), out.stride(1), out.stride(2),
            HD=hd, HD_P2=hd_p2, SPANS_P2=triton.next_power_of_2(n_spans), num_warps=1)
    return out


_OP = None  # torch.ops.spd_ref.decode_attention once prepare() registered it


def prepare() -> None:
    """Register the kernel's torch op (once; outside any compile: dynamo cannot trace the registration)."""
    global _OP
    if _OP is None:
        _kernels()  # a missing triton fails here, with its fix
        from torch.library import triton_op, wrap_triton

        @triton_op("spd_ref::decode_attention", mutates_args=())
        def decode_attention_op(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                                mask: torch.Tensor) -> torch.Tensor:
            return launch(q, keys, values, mask, wrap=wrap_triton)

        _OP = decode_attention_op


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if _OP is None:
        refuse_inside_compile("attention 'triton'", "spd_ref.kernels.attention.prepare('triton')")
        prepare()
    return _OP(q, keys, values, mask)
