"""The decode GEMV as one Triton kernel: y = x W^T (+ b) for an x of at most MAX_ROWS rows.

Why [ours]: a decode step reads every weight once and does almost no arithmetic, so its time is the
weight bytes over the rate they stream from HBM. On 2 x H200 inductor's kernels for these one-row
matmuls reached 2.2-3.6 of the 4.8 TB/s (results/h200_x2_compute/README.md). This kernel is the
plain streaming form: each program owns BLOCK_N outputs (rows of W) for every row of x and walks K
in BLOCK_K steps with an fp32 accumulator. One row of x multiplies and sums; 2..16 rows use tl.dot
(tensor cores take 16 rows; the missing ones are masked). There is no split-K: with BLOCK_N of 4-32
even a 4096-output projection gives hundreds of programs for the 132 SMs. Launch settings are fixed
per row class, not autotuned: Triton's autotuner chose slower settings than the best fixed one (7B TP-2
gate/up at one row: 32.1 against 27.7 us), and two ranks that tune apart run different kernels.

Measured (scripts/gemv_bench.py, results/h200_x2_gemv): on H200 it matches cuBLAS at 16 rows and is
slower than cuBLAS and inductor at one row, so "torch" stays the default.

`linear(x, w, b, impl)`: "torch" is F.linear. "triton" sends bf16/fp16 inputs of at most MAX_ROWS
rows to the kernel, through a torch.library triton_op so torch.compile keeps the kernel inside the
compiled graph and the CUDA graph, and everything else (prefill, fp32) to F.linear. Triton is imported
on first use; without a GPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1), which is
how the CPU tests check it.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from spd_ref.kernels.triton_env import interpreting, refuse_inside_compile, require_triton

LINEAR_IMPLS = ("torch", "triton")
DEFAULT_LINEAR = "torch"  # [ours] the kernel was measured no faster (module docstring)
MAX_ROWS = 16  # one tensor-core tile of rows: batch 16 decode, or any x of up to 16 rows
# Launch settings (BLOCK_N, BLOCK_K, num_warps, num_stages): the candidates scripts/gemv_bench.py times;
# the first of each table is the one used [ours: the fastest in sum over the 7B TP-1, 7B TP-2 and 13B TP-2
# block projections on H200, results/h200_x2_gemv].
ONE_ROW_CONFIGS = ((4, 1024, 4, 2), (8, 512, 4, 2), (8, 1024, 4, 3), (16, 512, 4, 3), (16, 256, 4, 4),
                   (32, 256, 4, 3), (8, 2048, 8, 2), (16, 1024, 8, 2), (32, 512, 8, 3))
MANY_ROW_CONFIGS = ((32, 128, 4, 4), (16, 256, 4, 3), (16, 128, 4, 4), (32, 256, 4, 3),
                    (64, 128, 4, 3), (64, 256, 8, 3), (16, 512, 4, 2), (32, 512, 8, 2))


@functools.lru_cache(maxsize=None)
def _triton():
    """(triton, kernel) built on first use."""
    triton, tl = require_triton("linear impl 'triton'", "impl 'torch'")

    @triton.jit
    def gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, UPCAST: tl.constexpr):
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rows = tl.arange(0, BLOCK_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            w = tl.load(w_ptr + cols[:, None] * stride_wn + ks[None, :],
                        mask=(cols[:, None] < N) & (ks[None, :] < K), other=0.0)
            x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :],
                        mask=(rows[:, None] < M) & (ks[None, :] < K), other=0.0)
            if BLOCK_M == 1:
                acc += tl.sum(w.to(tl.float32) * x.to(tl.float32), axis=1)[None, :]
            elif UPCAST:  # Triton's CPU interpreter multiplies bf16 tiles wrongly; fp32 tiles it gets right
                acc = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
            else:
                acc = tl.dot(x, tl.trans(w), acc)
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=(rows[:, None] < M) & (cols[None, :] < N))

    return triton, gemv_kernel


def _check(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> None:
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1] or x.shape[0] > MAX_ROWS:
        raise ValueError(f"gemv: x {tuple(x.shape)} and w {tuple(w.shape)} must be (M <= {MAX_ROWS}, K) and (N, K). "
                         "Fix: call linear(), which sends other shapes to F.linear")
    if x.stride(1) != 1 or w.stride(1) != 1 or (b is not None and (b.shape != (w.shape[0],) or b.stride(0) != 1)):
        raise ValueError("gemv: x, w (and b) must be contiguous along K, b of shape (N,). Fix: .contiguous()")


def launch(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None,
           config: Optional[tuple[int, int, int, int]] = None, wrap=None) -> torch.Tensor:
    """y (M, N) = x (M, K) W (N, K)^T (+ b), with `config` or the first of its row class's table.
    `wrap` is torch.library.wrap_triton inside the torch op (for the compiler); None launches directly."""
    _check(x, w, b)
    triton, kernel = _triton()
    m, n = x.shape[0], w.shape[0]
    bn, bk, warps, stages = config or (ONE_ROW_CONFIGS if m == 1 else MANY_ROW_CONFIGS)[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    (wrap(kernel) if wrap else kernel)[(triton.cdiv(n, bn),)](
        x, w, w if b is None else b, y, m, n, x.shape[1], x.stride(0), w.stride(0), y.stride(0),
        HAS_BIAS=b is not None, BLOCK_M=1 if m == 1 else MAX_ROWS, BLOCK_N=bn, BLOCK_K=bk,
        UPCAST=interpreting(), num_warps=warps, num_stages=stages)
    return y


_OP = None  # torch.ops.spd_ref.gemv once prepare() registered it


def prepare(impl: str) -> None:
    """Register the kernel's torch op for impl "triton" (once; outside any compile: dynamo cannot trace
    the registration). TPTransformer calls this when its `linear` is set."""
    global _OP
    if impl not in LINEAR_IMPLS:
        raise ValueError(f"linear impl {impl!r}: unknown. Fix: use one of {', '.join(LINEAR_IMPLS)}")
    if impl == "triton" and _OP is None:
        _triton()  # a missing triton fails here, with its fix
        from torch.library import triton_op, wrap_triton

        @triton_op("spd_ref::gemv", mutates_args=())
        def gemv(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
            return launch(x, w, b, wrap=wrap_triton)

        _OP = gemv


def linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None,
           impl: str = DEFAULT_LINEAR) -> torch.Tensor:
    """F.linear(x, w, b), with impl "triton" sending a decode-sized half-precision x to the kernel."""
    if impl == "triton" and _OP is None:
        refuse_inside_compile("linear impl 'triton'", "spd_ref.kernels.gemv.prepare('triton')")
    prepare(impl)  # checks impl; registers the op on first eager use
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if impl == "torch" or rows == 0 or rows > MAX_ROWS or x.dtype not in (torch.bfloat16, torch.float16):
        return F.linear(x, w, b)
    y = _OP(x.reshape(rows, x.shape[-1]).contiguous(), w, b)
    return y.view(*x.shape[:-1], w.shape[0])
