"""Shared fixtures: the offline SmolLM2, tiny random LLaMA configs, and a torchrun runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spd_ref.hf import random_model  # noqa: F401 (tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
os.environ.update(OFFLINE_ENV)
os.environ.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))
os.environ.setdefault("SPD_REF_CACHE", str(ROOT / ".cache"))


def tiny_config(heads: int = 4, kv_heads: int = 4, bias: bool = False, layers: int = 3,
                vocab: int = 256, hidden: int = 64, intermediate: int = 96):
    """A small random LLaMA config: multi-head by default, GQA with kv_heads < heads, biases optional."""
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
                       vocab_size=vocab, attention_bias=bias, mlp_bias=bias, max_position_embeddings=256,
                       rope_theta=10000.0, tie_word_embeddings=False)


def assert_kernel_keeps_decode(setting: str, impl: str):
    """bf16 decode through TPTransformer (biases, GQA, SPD on blocks 1 and 2) with `rt.<setting> = impl`
    equals the decode with the default, teacher-forced with the default's tokens: the 20-token prompt
    (longer than any kernel takes) exactly, each decode step within 5% of its logits' scale. Returns rt."""
    import torch

    from spd_ref.model import TPTransformer
    from spd_ref.tp import init_distributed

    model = random_model(tiny_config(bias=True, kv_heads=2))
    rt = TPTransformer.from_hf(model.config, model.state_dict(), init_distributed(), torch.bfloat16)
    rt.set_spd_blocks([1, 2])
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(3))
    want_tokens, want = rt.generate(ids, 4)
    setattr(rt, setting, impl)
    _, got = rt.generate(ids, 4, forced_tokens=want_tokens)
    assert torch.equal(got[0], want[0])  # the prompt ran the library path in both
    for g, w in zip(got[1:], want[1:]):
        assert (g.float() - w.float()).abs().max() <= 0.05 * w.float().abs().max()
    return rt


@pytest.fixture(scope="session")
def smollm2():
    from spd_ref.models import load_model

    return load_model("smollm2")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2):
    """A random multi-head model with biases, saved with SmolLM2's tokenizer (for torchrun tests).

    Its vocabulary (49152 + 67) divides by neither 2 nor 4: the split lm_head pads its last shard."""
    folder = tmp_path_factory.mktemp("tiny_bias")
    random_model(tiny_config(bias=True, vocab=smollm2[1].vocab_size + 67)).save_pretrained(folder)
    smollm2[1].save_pretrained(folder)
    return folder


def torchrun(nproc: int, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m spd_ref ARGS` under torchrun with gloo; fail the test on a non-zero exit."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "spd_ref", *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(autouse=True)
def _no_global_state_leaks():
    """A test must not leave autograd switched off for the tests after it (B2B trains)."""
    import torch

    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("this test left torch's grad mode disabled")
