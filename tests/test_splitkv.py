"""The split-KV decode attention kernel (spd_ref.kernels.splitkv) under Triton's CPU interpreter: equal to
exact softmax attention within bf16 rounding for every layout it serves (one row, GQA row tiles, many
spans, masked keys and wholly masked spans, a head size that is not a power of two), used only where it
applies, and the whole runtime with it equal to the runtime with sdpa. (The GPU run of the same kernel,
eager and compiled, is scripts/gpu_check.py's.)"""
import os

import pytest
import torch

os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are first built (spd_ref.kernels.splitkv._kernels)
import triton  # noqa: E402,F401  (a missing triton is a failure here: make test installs it)

from conftest import assert_kernel_keeps_decode  # noqa: E402
from spd_ref.kernels import splitkv  # noqa: E402
from spd_ref.kernels.attention import attention, resolve  # noqa: E402


def operands(b, hq, hkv, t, s, hd, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, keys, values = (torch.randn(shape, generator=g).to(torch.bfloat16)
                       for shape in ((b, hq, t, hd), (b, hkv, s, hd), (b, hkv, s, hd)))
    return q, keys, values


def exact(q, keys, values, mask):
    """fp64 softmax attention; query head h reads KV head h // (Hq / Hkv)."""
    group = q.shape[1] // keys.shape[1]
    k, v = (x.double().repeat_interleave(group, dim=1) for x in (keys, values))
    scores = (q.double() @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def causal(s, t, last):
    """Mask rows of t query tokens ending at position `last` over a cache of s slots (later slots hidden)."""
    return torch.ones(s, s, dtype=torch.bool).tril()[last - t + 1:last + 1][None, None]


def assert_rounding_close(out, want):
    """Within bf16 rounding: the kernel keeps scores, softmax and sums in fp32 and rounds the output once
    (p is rounded to bf16 before its tl.dot with V where rows > 1, as flash attention does)."""
    assert out.dtype == torch.bfloat16 and out.shape == want.shape
    err = (out.double() - want).abs()
    assert (err <= 2 * 2 ** -8 * want.abs() + 4e-3).all(), err.max()


@pytest.mark.parametrize("b, hq, hkv, t, s, hd", [
    (1, 4, 4, 1, 70, 64),     # one row per program (the 7B's decode), two spans, the last one short
    (1, 1, 1, 1, 300, 128),   # one program's worth of heads: the cache cut into 5 spans
    (2, 6, 2, 3, 130, 64),    # GQA: 3 heads x 3 tokens = 9 rows in one tile of 16
    (1, 7, 1, 3, 90, 64),     # 21 rows: two row tiles, the second mostly masked
    (3, 8, 2, 2, 40, 48),     # head size 48: padded to 64 inside the kernel
])
def test_kernel_equals_exact_attention(b, hq, hkv, t, s, hd):
    q, keys, values = operands(b, hq, hkv, t, s, hd)
    mask = causal(s, t, s - 6)  # the last 5 slots are not written yet: hidden
    want = exact(q, keys, values, mask)
    for config in splitkv.CONFIGS:  # one span (written directly) and several (merged) among them
        assert_rounding_close(splitkv.launch(q, keys, values, mask, config), want)


def test_wholly_masked_spans_weigh_nothing():
    """A mask that hides the first 200 keys leaves the first spans with no key at all (running max -inf)."""
    q, keys, values = operands(1, 2, 1, 1, 300, 64, seed=1)
    mask = torch.zeros(1, 1, 1, 300, dtype=torch.bool)
    mask[..., 200:260] = True
    mask[..., 7] = True  # and one lone key in an otherwise hidden span
    span, spans = splitkv.spans_for(1, 1, 1, 300)
    assert spans > 3 and span < 200  # so at least two spans see nothing
    assert_rounding_close(splitkv.launch(q, keys, values, mask), exact(q, keys, values, mask))


@pytest.mark.parametrize("config", splitkv.CONFIGS)
@pytest.mark.parametrize("batch, n_kv, tiles, s", [(1, 16, 1, 513), (16, 16, 1, 2049), (1, 1, 1, 64), (1, 2, 3, 5000)])
def test_spans_cover_the_cache_once(batch, n_kv, tiles, s, config):
    span, spans = splitkv.spans_for(batch, n_kv, tiles, s, config)
    block_s, target = config[:2]
    assert span % block_s == 0 and (spans - 1) * span < s <= spans * span
    programs = batch * n_kv * tiles * spans
    assert programs >= min(target, batch * n_kv * tiles * -(-s // block_s)) // 2


def test_attention_triton_sends_other_queries_to_sdpa_and_rejects_bad_shapes():
    q, keys, values = operands(1, 4, 2, splitkv.MAX_TOKENS + 1, 40, 16)
    mask = causal(40, splitkv.MAX_TOKENS + 1, 39)
    assert torch.equal(attention(q, keys, values, mask, "triton"), attention(q, keys, values, mask, "sdpa"))  # prefill
    q1, m1 = q[:, :, :1].float(), mask[:, :, :1]
    assert torch.equal(attention(q1, keys.float(), values.float(), m1, "triton"),
                       attention(q1, keys.float(), values.float(), m1, "sdpa"))  # fp32
    with pytest.raises(ValueError, match="mask .* must be"):
        splitkv.launch(q[:, :, :1], keys, values, mask)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        splitkv.launch(q[:, :3, :1], keys, values, m1)
    with pytest.raises(ValueError, match="contiguous"):
        splitkv.launch(q[:, :, :1, ::2], keys[..., ::2], values[..., ::2], m1)


def test_auto_is_the_kernel_for_one_row_on_a_gpu_and_sdpa_otherwise():
    q, keys, values = operands(2, 4, 2, 1, 50, 32, seed=2)
    mask = causal(50, 1, 45)
    assert resolve("auto", q[:1].to("meta")) == "sdpa" and resolve("flex", q) == "flex"  # no GPU: sdpa
    if torch.cuda.is_available():
        assert resolve("auto", q[:1].cuda()) == "triton" and resolve("auto", q.cuda()) == "sdpa"
        assert resolve("auto", q[:1, :, :1].expand(1, 4, 2, 32).cuda()) == "sdpa"  # two tokens
    # on the CPU, auto is sdpa whatever the rows (the kernel runs there only under the interpreter)
    for rows in (1, 2):
        args = q[:rows], keys[:rows], values[:rows], mask
        assert torch.equal(attention(*args, "auto"), attention(*args, "sdpa"))


def test_runtime_with_the_kernel_equals_the_runtime_with_sdpa():
    """The prompt (20 tokens > MAX_TOKENS) runs sdpa in both; the decode steps run the kernel."""
    rt = assert_kernel_keeps_decode("attention", "triton")
    with pytest.raises(ValueError, match="attention 'flash'"):
        rt.attention = "flash"
