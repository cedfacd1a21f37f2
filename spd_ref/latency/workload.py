"""What a latency run measures: the model shapes, the SPD blocks of a ratio, list arguments.

Shared by bench (spd_ref.latency.bench), the peer (spd_ref.latency.peer) and scripts/.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from spd_ref.plan import choose_blocks, load_plan, num_spd_blocks

# LLaMA2 shapes (the public configs); "tiny" is for CPU tests: heads divide by 1, 2, 4.
SHAPES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=128, vocab_size=256),
    "llama2-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      intermediate_size=11008, vocab_size=32000),
    "llama2-13b": dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
                       intermediate_size=13824, vocab_size=32000),
    "llama2-70b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                       intermediate_size=28672, vocab_size=32000),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def llama_config(shape: str, layers: Optional[int] = None):
    """A transformers LlamaConfig of a named shape, optionally truncated to `layers` blocks."""
    from transformers import LlamaConfig

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}. Fix: one of {', '.join(SHAPES)}, or --model PATH")
    kw = dict(SHAPES[shape], max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0)
    if layers is not None:
        if layers < 1:
            raise ValueError(f"--layers {layers}: give at least 1 block")
        kw["num_hidden_layers"] = min(layers, kw["num_hidden_layers"])
    return LlamaConfig(**kw)


def spread_blocks(ratio: float, num_blocks: int) -> list[int]:
    """[ours] round(ratio * L) block indices spread evenly over the depth (the centre of each of k
    equal slices): 0.5 of 8 blocks -> [1, 3, 5, 7]; 1 -> all blocks; 0 -> none."""
    k = num_spd_blocks(ratio, num_blocks)
    return [math.floor((i + 0.5) * num_blocks / k) for i in range(k)]


def blocks_for_ratio(ratio: float, num_blocks: int, plan_dir: Optional[str] = None) -> list[int]:
    """SPD blocks for a ratio: with --plan, the round(r L) least sensitive blocks of the calibrated
    scan (spd_ref.plan.choose_blocks, as calibration chooses them); else spread_blocks."""
    if plan_dir is None:
        return spread_blocks(ratio, num_blocks)

    plan = load_plan(plan_dir)
    if plan.num_blocks != num_blocks:
        raise ValueError(f"--plan {plan_dir} is for {plan.num_blocks} blocks ({plan.model_id!r}); this model "
                         f"has {num_blocks}. Fix: use the plan of this model, or leave --plan out.")
    scores = {r.block: r.sensitivity for r in plan.blocks}
    return choose_blocks([scores[b] for b in range(num_blocks)], ratio)


def parse_list(text: str, kind: Callable = float) -> list:
    """'1,16' -> [1, 16]; numbers accept K/M/G suffixes ('16K' = 16384); '' or 'none' -> []."""
    if text.strip().lower() in ("", "none"):
        return []
    out = []
    for item in text.split(","):
        item = item.strip()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(item[-1:].upper(), 1) if kind in (int, float) else 1
        out.append(kind(item[:-1]) * mult if mult > 1 else kind(item))
    return out
