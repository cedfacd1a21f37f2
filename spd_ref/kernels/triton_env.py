"""What the Triton kernels share: the package, imported with a clear error; whether the CPU interpreter
runs them (TRITON_INTERPRET=1, how the CPU tests check them); the error for an op that is not registered
yet inside a compile."""
from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def require_triton(choice: str, instead: str):
    """(triton, triton.language); without the package, an error naming the `choice` that needs it and the
    setting to use `instead`."""
    try:
        import triton
        import triton.language as tl
    except ImportError as err:
        raise RuntimeError(f"{choice} needs the triton package. Fix: install triton (CUDA builds of torch bring "
                           f"it) or use {instead}") from err
    return triton, tl


def refuse_inside_compile(choice: str, fix: str) -> None:
    """Called where a kernel's torch op is not registered yet: torch.library's registration cannot be traced,
    so inside a compile that is an error naming the `fix` (the prepare call to make before compiling)."""
    if torch.compiler.is_compiling():
        raise RuntimeError(f"{choice} inside a compile needs the op registered first. Fix: call {fix} before compiling")
