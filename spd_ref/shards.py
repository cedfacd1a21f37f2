"""Model weights: whether a weights file is whole, which part of each weight one TP rank holds, and
how the runtime stores it.

On disk: `check_gguf` and `check_safetensors_folder` refuse a truncated or foreign file before a
loader fails deep inside with an error that names nothing (spd_ref.models calls them before loading).
Per rank: the split is spd_ref.partition's (query heads, KV heads, MLP columns); here it becomes slices
of the HF tensors (`rank_slices`), q/k/v and gate/up fused into one matrix each (`fuse_block`), and
the vocabulary rows of a split lm_head (`vocab_shard`).
"""
from __future__ import annotations

import json
import math
import mmap
import struct
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from spd_ref.partition import RankShard

WEIGHTS = ("input_norm", "q_w", "k_w", "v_w", "q_b", "k_b", "v_b", "o_w", "o_b",
           "post_norm", "gate_w", "up_w", "down_w", "gate_b", "up_b", "down_b")


def rank_slices(config, shard: RankShard) -> dict[str, tuple[int, slice]]:
    """For each block weight: (dim, slice) of the full HF tensor this rank holds; dim -1 = replicated."""
    hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q = slice(shard.q_heads.start * hd, shard.q_heads.stop * hd)
    kv = slice(shard.kv_heads.start * hd, shard.kv_heads.stop * hd)
    cols = slice(shard.mlp_cols.start, shard.mlp_cols.stop)
    return {"input_norm": (-1, None), "post_norm": (-1, None), "o_b": (-1, None), "down_b": (-1, None),
            "q_w": (0, q), "q_b": (0, q), "k_w": (0, kv), "k_b": (0, kv), "v_w": (0, kv), "v_b": (0, kv),
            "o_w": (1, q), "gate_w": (0, cols), "gate_b": (0, cols), "up_w": (0, cols), "up_b": (0, cols),
            "down_w": (1, cols)}


HF_NAMES = {"input_norm": "input_layernorm.weight", "post_norm": "post_attention_layernorm.weight",
            "q_w": "self_attn.q_proj.weight", "k_w": "self_attn.k_proj.weight", "v_w": "self_attn.v_proj.weight",
            "q_b": "self_attn.q_proj.bias", "k_b": "self_attn.k_proj.bias", "v_b": "self_attn.v_proj.bias",
            "o_w": "self_attn.o_proj.weight", "o_b": "self_attn.o_proj.bias",
            "gate_w": "mlp.gate_proj.weight", "up_w": "mlp.up_proj.weight", "down_w": "mlp.down_proj.weight",
            "gate_b": "mlp.gate_proj.bias", "up_b": "mlp.up_proj.bias", "down_b": "mlp.down_proj.bias"}


def vocab_shard(head: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rows [rank * n, (rank + 1) * n) of the head, n = ceil(V / world); the last shard is padded
    with zero rows to n (the all-gather needs equal pieces; the padding is cut off after it)."""
    n = -(-head.shape[0] // world)
    shard = head[rank * n:(rank + 1) * n]  # a view: no copy unless padded
    return F.pad(shard, (0, 0, 0, n - shard.shape[0])) if shard.shape[0] < n else shard


def fuse_block(block: dict) -> dict:
    """q/k/v and gate/up as one matrix each: one matmul launch instead of three (two) when decoding."""
    def cat(*names: str) -> Optional[torch.Tensor]:
        parts = [block.pop(n) for n in names]
        return None if parts[0] is None else torch.cat(parts)

    qkv_w, qkv_b = cat("q_w", "k_w", "v_w"), cat("q_b", "k_b", "v_b")
    gate_up_w, gate_up_b = cat("gate_w", "up_w"), cat("gate_b", "up_b")
    return dict(block, qkv_w=qkv_w, qkv_b=qkv_b, gate_up_w=gate_up_w, gate_up_b=gate_up_b)


def full_shapes(config) -> dict[str, tuple[int, ...]]:
    """The full (unsharded) shape of every block weight the config has (biases only where enabled)."""
    d, inter = config.hidden_size, config.intermediate_size
    hd = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    shapes = {"input_norm": (d,), "post_norm": (d,), "q_w": (q, d), "k_w": (kv, d), "v_w": (kv, d),
              "o_w": (d, q), "gate_w": (inter, d), "up_w": (inter, d), "down_w": (d, inter)}
    if getattr(config, "attention_bias", False):
        shapes.update(q_b=(q,), k_b=(kv,), v_b=(kv,), o_b=(d,))
    if getattr(config, "mlp_bias", False):
        shapes.update(gate_b=(inter,), up_b=(inter,), down_b=(d,))
    return shapes


# --- whole files on disk -------------------------------------------------------------------------

# GGUF metadata value types with a fixed size (struct formats); 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


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
