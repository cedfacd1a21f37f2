"""The decode GEMV kernel (spd_ref.kernels.gemv) under Triton's CPU interpreter: equal to the exact
product within bf16 rounding for every launch setting, dispatched only where it applies, and the whole
runtime with it equal to the runtime with F.linear. (`make test` installs triton for the interpreter;
the GPU run of the same kernel is scripts/gpu_check.py's.)"""
import os

import pytest
import torch
import torch.nn.functional as F

os.environ["TRITON_INTERPRET"] = "1"  # before the kernel is first built (spd_ref.kernels.gemv._triton)
import triton  # noqa: E402,F401  (a missing triton is a failure here: make test installs it)

from conftest import assert_kernel_keeps_decode  # noqa: E402
from spd_ref.kernels import gemv  # noqa: E402


def operands(m, n, k, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(torch.bfloat16)
    b = torch.randn(n, generator=g).to(torch.bfloat16) if bias else None
    exact = x.double() @ w.double().T + (b.double() if bias else 0)
    return x, w, b, exact


def assert_rounding_close(y, exact):
    """Within two bf16 roundings of the exact product (the kernel accumulates in fp32, rounds once)."""
    assert y.dtype == torch.bfloat16 and y.shape == exact.shape
    assert ((y.double() - exact).abs() <= 2 * 2 ** -8 * exact.abs() + 1e-3).all(), (y.double() - exact).abs().max()


@pytest.mark.parametrize("config", gemv.ONE_ROW_CONFIGS + gemv.MANY_ROW_CONFIGS)
def test_every_launch_setting_computes_the_product(config):
    rows = [1] if config in gemv.ONE_ROW_CONFIGS else [2, 16]
    for m in rows:  # N and K off every block size: the masked edges run too
        x, w, b, exact = operands(m, 3 * config[0] + 5, config[1] + 37, bias=True)
        assert_rounding_close(gemv.launch(x, w, b, config=config), exact)


@pytest.mark.parametrize("m, bias", [(1, False), (1, True), (5, True), (16, False)])
def test_linear_triton_matches_the_product_and_keeps_leading_dims(m, bias):
    x, w, b, exact = operands(m, 48, 200, bias)
    y = gemv.linear(x.view(1, m, 200), w, b, impl="triton")
    assert y.shape == (1, m, 48)
    assert_rounding_close(y[0], exact)


def test_linear_sends_other_inputs_to_f_linear():
    x, w, b, _ = operands(gemv.MAX_ROWS + 1, 24, 64, bias=True)
    assert torch.equal(gemv.linear(x, w, b, impl="triton"), F.linear(x, w, b))  # prefill-sized
    assert torch.equal(gemv.linear(x[:1].float(), w.float(), None, impl="triton"), F.linear(x[:1].float(), w.float()))
    with pytest.raises(ValueError, match="linear impl 'cutlass'"):
        gemv.linear(x, w, b, impl="cutlass")
    with pytest.raises(ValueError, match=r"must be \(M <= 16, K\)"):
        gemv.launch(x, w, b)
    with pytest.raises(ValueError, match="contiguous"):
        gemv.launch(x[:2, ::2], w[:, ::2])


def test_runtime_with_the_kernel_equals_the_runtime_with_f_linear():
    """The prompt (20 rows > MAX_ROWS) runs F.linear in both; the decode steps run the kernel."""
    assert_kernel_keeps_decode("linear", "triton")
