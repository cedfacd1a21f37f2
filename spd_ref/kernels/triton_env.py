"""What the Triton kernels share: the package, imported with a clear error, and whether the CPU
interpreter runs them (TRITON_INTERPRET=1, how the CPU tests check them)."""
from __future__ import annotations

import os


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
