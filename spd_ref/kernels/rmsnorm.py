"""RMSNorm, as torch ops or as one Triton kernel that the compiler cannot fuse into its neighbours.

Why [ours]: compiled with max-autotune, inductor folds each RMSNorm into the GEMV that reads its output
(one kernel computes the mean and the projection). On H200 the fused post-attention norm + gate/up kernel of
the 7B TP-2 shard took 28.1 us a layer (results/h200_x2_compute) where the same GEMV compiled alone took
23.1 (results/h200_x2_gemv). As a torch.library triton_op the norm stays one small kernel of its own and
the GEMV after it streams its weight as it does alone; whether that wins in the step is measured
(results/h200_norm).

`rms_norm(x, weight, eps, impl)`: "torch" is LlamaRMSNorm spelled out (fp32 statistics, the normalised
value rounded to x's dtype, then multiplied by the weight in that dtype); "triton" computes the same in one
kernel, one program per row, for decode-sized inputs (at most MAX_ROWS rows, x and weight of one float dtype,
on a GPU or under Triton's CPU interpreter); anything else (prefill) runs "torch", as the other kernels do.
"""
from __future__ import annotations

import functools

import torch

from spd_ref.kernels.triton_env import interpreting, refuse_inside_compile, require_triton

NORM_IMPLS = ("torch", "triton")
DEFAULT_NORM = "torch"
MAX_ROWS = 16  # [ours] token rows per call the kernel is used for, as spd_ref.kernels.gemv
BLOCK_MAX = 8192  # [ours] a row up to this wide is read once and kept in registers; a wider one is read twice
# num_warps candidates, timed by scripts/norm_bench.py; the first is the one used [ours]
WARPS = (8, 4, 16, 2)


def check(impl: str) -> None:
    if impl not in NORM_IMPLS:
        raise ValueError(f"norm {impl!r}: unknown. Fix: use one of {', '.join(NORM_IMPLS)}")


def reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm, to the operation (fp32 statistics, weight applied in the input dtype)."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@functools.lru_cache(maxsize=None)
def _kernel():
    triton, tl = require_triton("norm 'triton'", "norm 'torch'")

    @triton.jit
    def rmsnorm_kernel(x_ptr, w_ptr, y_ptr, D, stride_x, stride_y, eps, BLOCK: tl.constexpr, ONE_PASS: tl.constexpr):
        row = tl.program_id(0)
        if ONE_PASS:  # the whole row in one block: read once
            d = tl.arange(0, BLOCK)
            x = tl.load(x_ptr + row * stride_x + d, mask=d < D, other=0.0)
            scale = 1.0 / tl.sqrt(tl.sum(x.to(tl.float32) * x.to(tl.float32), axis=0) / D + eps)
            normed = (x.to(tl.float32) * scale).to(x.dtype)  # rounded to x's dtype before the weight, as torch
            w = tl.load(w_ptr + d, mask=d < D, other=0.0)
            tl.store(y_ptr + row * stride_y + d, (normed.to(tl.float32) * w.to(tl.float32)).to(y_ptr.dtype.element_ty),
                     mask=d < D)
        else:  # sum the squares block by block, then read the row again to scale it
            squares = tl.zeros((BLOCK,), tl.float32)
            for d0 in range(0, D, BLOCK):
                d = d0 + tl.arange(0, BLOCK)
                x = tl.load(x_ptr + row * stride_x + d, mask=d < D, other=0.0).to(tl.float32)
                squares += x * x
            scale = 1.0 / tl.sqrt(tl.sum(squares, axis=0) / D + eps)
            for d0 in range(0, D, BLOCK):
                d = d0 + tl.arange(0, BLOCK)
                x = tl.load(x_ptr + row * stride_x + d, mask=d < D, other=0.0)
                w = tl.load(w_ptr + d, mask=d < D, other=0.0)
                normed = (x.to(tl.float32) * scale).to(x.dtype)
                tl.store(y_ptr + row * stride_y + d,
                         (normed.to(tl.float32) * w.to(tl.float32)).to(y_ptr.dtype.element_ty), mask=d < D)

    return triton, rmsnorm_kernel


def launch(x: torch.Tensor, weight: torch.Tensor, eps: float, warps: int = WARPS[0], wrap=None) -> torch.Tensor:
    """One program per row of x (..., D) with `warps` warps; `wrap` is torch.library.wrap_triton inside the op."""
    d = x.shape[-1]
    if weight.shape != (d,) or x.stride(-1) != 1:
        raise ValueError(f"rms_norm: x {tuple(x.shape)} must be contiguous in its last dim and weight "
                         f"{tuple(weight.shape)} must be ({d},). Fix: pass the norm's own weight and a contiguous x")
    triton, kernel = _kernel()
    rows = x.reshape(-1, d)
    out = torch.empty(rows.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    block = min(triton.next_power_of_2(d), BLOCK_MAX)
    (wrap(kernel) if wrap else kernel)[(rows.shape[0],)](
        rows, weight, out, d, rows.stride(0), out.stride(0), float(eps), BLOCK=block, ONE_PASS=block >= d,
        num_warps=warps)
    return out.view(*x.shape[:-1], d)


_OP = None  # torch.ops.spd_ref.rms_norm once prepare() registered it


def prepare(impl: str) -> None:
    """Check impl; for "triton", register the kernel's torch op (once; outside any compile)."""
    global _OP
    check(impl)
    if impl == "triton" and _OP is None:
        _kernel()  # a missing triton fails here, with its fix
        from torch.library import triton_op, wrap_triton

        @triton_op("spd_ref::rms_norm", mutates_args=())
        def rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
            return launch(x, weight, eps, wrap=wrap_triton)

        _OP = rms_norm_op


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, impl: str = DEFAULT_NORM) -> torch.Tensor:
    check(impl)
    on_kernel = ((x.is_cuda or interpreting()) and x.is_floating_point() and x.dtype == weight.dtype
                 and x.numel() <= MAX_ROWS * x.shape[-1])
    if impl == "torch" or not on_kernel:
        return reference(x, weight, eps)
    if _OP is None:
        refuse_inside_compile("norm 'triton'", "spd_ref.kernels.rmsnorm.prepare('triton')")
        prepare(impl)
    return _OP(x.contiguous(), weight, eps)
