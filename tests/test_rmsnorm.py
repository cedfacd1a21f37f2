"""spd_ref.kernels.rmsnorm: the Triton RMSNorm equals LlamaRMSNorm's operations (under Triton's CPU
interpreter), takes decode-sized inputs only, and keeps the runtime's decode."""
from __future__ import annotations

import os

import pytest
import torch

os.environ["TRITON_INTERPRET"] = "1"  # before the kernel is first built (spd_ref.kernels.rmsnorm._kernel)
import triton  # noqa: E402,F401  (a missing triton is a failure here: make test installs it)

from conftest import assert_kernel_keeps_decode  # noqa: E402
from spd_ref.kernels import rmsnorm  # noqa: E402


def inputs(rows: int, width: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, width, generator=g) * 3 + 0.5).to(dtype)
    return x, (torch.rand(width, generator=g) + 0.5).to(dtype)


def ulps(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest difference in units of the last place of `want`'s dtype at want's magnitude."""
    eps = torch.finfo(want.dtype).eps
    return ((got.double() - want.double()).abs() / (want.double().abs().clamp_min(1e-30) * eps)).max().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows,width", [(1, 64), (3, 100), (16, 256)])
def test_kernel_equals_the_reference(rows, width, dtype):
    """Within one rounding of the output per element (the sum of squares adds in another order), and in fp16
    equal to the bit almost everywhere: the same two roundings as torch (normalised, then times the weight),
    not one. Not so in bf16 here: Triton's CPU interpreter rounds fp32 to bf16 toward zero (a GPU rounds to
    nearest), so about half of the bf16 outputs sit one unit lower than torch's."""
    x, w = inputs(rows, width, dtype)
    got, want = rmsnorm.launch(x, w, 1e-5), rmsnorm.reference(x, w, 1e-5)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert ulps(got, want) <= (2.0 if dtype != torch.float32 else 64.0)
    if dtype == torch.float16:
        assert (got != want).float().mean().item() <= 0.02


@pytest.mark.parametrize("warps", rmsnorm.WARPS)
def test_a_row_wider_than_a_block_takes_two_passes(monkeypatch, warps):
    """A row of 2.5 blocks: both passes walk it, the masked tail included; every warp setting."""
    monkeypatch.setattr(rmsnorm, "BLOCK_MAX", 32)
    x, w = inputs(2, 80, torch.float16, seed=1)
    got, want = rmsnorm.launch(x, w, 1e-6, warps), rmsnorm.reference(x, w, 1e-6)
    assert ulps(got, want) <= 2.0 and (got != want).float().mean().item() <= 0.02


def test_eps_counts_where_the_row_is_small():
    """A row whose mean square (about 1e-5) is eps's size: leaving eps out would be 40% off."""
    x, w = inputs(2, 64, torch.float32, seed=2)
    x = x * 1e-3
    torch.testing.assert_close(rmsnorm.launch(x, w, 1e-5), rmsnorm.reference(x, w, 1e-5), rtol=1e-5, atol=1e-6)


def test_dispatch_sends_only_decode_sized_inputs_to_the_kernel(monkeypatch):
    """"triton" runs the kernel for at most MAX_ROWS rows of one dtype; prefill, mixed dtypes and "torch"
    run the reference, to the bit."""
    calls = []
    real = rmsnorm.launch
    monkeypatch.setattr(rmsnorm, "launch", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(rmsnorm, "_OP", None)  # registered again, around the counting launch
    rmsnorm.prepare("triton")
    x, w = inputs(rmsnorm.MAX_ROWS + 1, 64, torch.bfloat16)
    for args in ((x, w), (x[:2].float(), w)):  # prefill-sized; fp32 x with a bf16 weight
        assert torch.equal(rmsnorm.rms_norm(*args, 1e-5, "triton"), rmsnorm.reference(*args, 1e-5))
    assert torch.equal(rmsnorm.rms_norm(x[:2], w, 1e-5, "torch"), rmsnorm.reference(x[:2], w, 1e-5))
    assert not calls
    rmsnorm.rms_norm(x[:rmsnorm.MAX_ROWS].view(4, 4, 64), w, 1e-5, "triton")
    assert len(calls) == 1
    monkeypatch.setattr(rmsnorm, "_OP", None)  # the next user registers the op with the real launch


def test_bad_input_gets_an_error_naming_the_fix():
    x, w = inputs(2, 64, torch.bfloat16)
    with pytest.raises(ValueError, match="norm 'fused': unknown. Fix: use one of torch, triton"):
        rmsnorm.rms_norm(x, w, 1e-5, "fused")
    with pytest.raises(ValueError, match=r"weight \(32,\) must be \(64,\)"):
        rmsnorm.launch(x, w[:32], 1e-5)
    with pytest.raises(ValueError, match="contiguous"):
        rmsnorm.launch(x.t(), w[:2], 1e-5)


def test_runtime_decode_with_the_kernel_equals_the_default():
    rt = assert_kernel_keeps_decode("norm", "triton")
    assert rt.norm == "triton"
    with pytest.raises(ValueError, match="norm 'x': unknown"):
        rt.norm = "x"
