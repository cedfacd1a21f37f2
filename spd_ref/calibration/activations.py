"""The calibration activation cache: the input of every block of the plain TP model (METHOD.md s.3).

The scan, B2B and HG all start from `capture_block_inputs`: one pass of the TP model keeps the hidden
state entering each block. That is (L + 1) x n x T x d numbers: at the paper's 128 x 2048 tokens,
18.7 GB for SmolLM2-135M and 142 GB for LLaMA2-7B in fp32. [ours] Two knobs make it fit:
`dtype=torch.bfloat16` halves it (9.4 GB / 71 GB), and `offload=folder` keeps it in memory-mapped
files on the host's disk, so the accelerator holds the model and one batch of activations at a time
(with bf16 files: 71 GB of disk for LLaMA2-7B, and a few GB of GPU memory besides the model).
Whatever the storage, a batch is cast back to the model's dtype and device before it is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from spd_ref.block import BlockMode
from spd_ref.hf import SimulatedTPLayer, decoder_layers, set_spd_blocks

# Layer-call arguments that carry state between calls: the scan runs each block on whole windows.
_DROPPED_KWARGS = ("cache", "past_key_values", "past_key_value", "use_cache", "cache_position")


class _Captured(Exception):
    """Raised from a pre-hook on block 0 to stop the forward pass once its arguments are known."""

    def __init__(self, kwargs: dict):
        super().__init__("captured")
        self.kwargs = kwargs


def layer_call_kwargs(model: nn.Module, seq_len: int) -> dict[str, Any]:
    """The keyword arguments the model passes to its decoder layers for windows of seq_len tokens.

    They (rotary cos/sin, causal mask, position ids) are whatever this transformers version builds;
    asking the model itself, and stopping at block 0, keeps us independent of its internals. They are
    built for one window without padding, so every tensor in them broadcasts over any batch size.
    """
    first = decoder_layers(model)[0]

    def grab(_module: nn.Module, _args: tuple, kwargs: dict) -> None:
        raise _Captured({k: v for k, v in kwargs.items() if k not in _DROPPED_KWARGS})

    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    dummy = torch.zeros(1, seq_len, dtype=torch.long, device=model_device(model))
    try:
        with torch.no_grad():
            model(input_ids=dummy, use_cache=False)
    except _Captured as done:
        return done.kwargs
    finally:
        handle.remove()
    raise RuntimeError("the model never called its first decoder layer; is it a LLaMA-style causal LM?")


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass
class BlockInputs:
    """Calibration activations of the unmodified TP model.

    hidden[l] is the input of block l (n, T, d) for l < L, and hidden[L] the last block's output, so
    the TP output of block l is hidden[l + 1], stored as capture_block_inputs was told (module
    docstring). `kwargs` are the layer-call arguments (any batch size); `batch_size` is how many
    windows one pass takes; `device` and `dtype` are the model's, what `block` and `batches` return.
    """

    tokens: torch.Tensor
    hidden: list[torch.Tensor]
    kwargs: dict[str, Any]
    batch_size: int
    device: Optional[torch.device] = None
    dtype: Optional[torch.dtype] = None

    def block(self, l: int, rows: slice = slice(None)) -> torch.Tensor:
        """hidden[l] (or some of its windows) in the model's dtype, on its device."""
        return self.hidden[l][rows].to(device=self.device, dtype=self.dtype)

    def first(self, n: int) -> "BlockInputs":
        """The same cache restricted to its first n windows (views, no copy): the scan can read fewer
        windows than recovery trains on (calibrate's recover_samples)."""
        if not 1 <= n <= self.tokens.shape[0]:
            raise ValueError(f"n={n} windows asked of a cache of {self.tokens.shape[0]}. Fix: 1 <= n <= "
                             f"{self.tokens.shape[0]}")
        return BlockInputs(self.tokens[:n], [h[:n] for h in self.hidden], self.kwargs, self.batch_size,
                           self.device, self.dtype)

    def batches(self, l: int) -> list[tuple[slice, torch.Tensor]]:
        n = self.hidden[l].shape[0]
        return [(slice(i, min(i + self.batch_size, n)), self.block(l, slice(i, i + self.batch_size)))
                for i in range(0, n, self.batch_size)]


def _store(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, offload: Optional[Path],
           index: int) -> torch.Tensor:
    if offload is None:
        return torch.empty(shape, dtype=dtype, device=device)
    size = 1
    for s in shape:
        size *= s
    return torch.from_file(str(offload / f"hidden_{index:03d}.bin"), shared=True, size=size, dtype=dtype).view(shape)


def check_tokens(tokens: torch.Tensor, batch_size: int) -> None:
    if tokens.dim() != 2 or tokens.shape[1] < 2 or tokens.dtype != torch.long:
        raise ValueError(f"tokens must be a LongTensor (n_windows, seq_len >= 2); got {tuple(tokens.shape)} "
                         f"{tokens.dtype}. Fix: use spd_ref.calibration.data.calibration_tokens or heldout_tokens.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (windows per forward pass).")


def block_modes(model: nn.Module) -> list[BlockMode]:
    return [layer.block_mode for layer in decoder_layers(model)]


def restore_modes(model: nn.Module, modes: list[BlockMode]) -> None:
    for layer, mode in zip(decoder_layers(model), modes):
        layer.block_mode = mode


def require_tp(model: nn.Module) -> None:
    if not isinstance(decoder_layers(model)[0], SimulatedTPLayer):
        raise RuntimeError("this needs a model under simulated TP. Fix: spd_ref.hf.apply_tp(model, tp_degree) "
                           "first.")


@torch.no_grad()
def capture_block_inputs(model: nn.Module, tokens: torch.Tensor, batch_size: int = 4, progress: bool = True,
                         dtype: Optional[torch.dtype] = None, offload: Optional[str | Path] = None) -> BlockInputs:
    """Run the model with every block in plain TP mode and keep the input of each block (and the last output).

    dtype: how the activations are stored (None: the model's; [ours] torch.bfloat16 halves the
    memory). offload: a folder for memory-mapped files (on the host) instead of tensors on the
    model's device. Memory: (L + 1) * n * T * d values. The model's SPD blocks are restored afterwards.
    """
    check_tokens(tokens, batch_size)
    require_tp(model)
    layers, was = decoder_layers(model), block_modes(model)
    device, model_dtype = model_device(model), next(model.parameters()).dtype
    tokens = tokens.to(device)
    folder = None if offload is None else Path(offload)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    store_device = device if folder is None else torch.device("cpu")
    cache = BlockInputs(tokens, [], layer_call_kwargs(model, tokens.shape[1]), batch_size, device, model_dtype)
    set_spd_blocks(model, [])
    try:
        h = model.get_input_embeddings()(tokens)
        shape = tuple(h.shape)
        for l in tqdm(range(len(layers) + 1), desc="capture block inputs", disable=not progress, leave=False):
            if l:
                h = torch.cat([layers[l - 1](x, **cache.kwargs) for x in h.split(cache.batch_size)])
            cache.hidden.append(_store(shape, dtype or model_dtype, store_device, folder, l))
            cache.hidden[-1].copy_(h)
            if dtype is not None and dtype != model_dtype:
                h = cache.block(l)  # the next block sees what the scan will see: the stored values
    finally:
        restore_modes(model, was)
    return cache
