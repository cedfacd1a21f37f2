"""Kernels the runtime may call in place of a torch op: a leaf below the core (imports nothing from spd_ref
outside this package).

attention: softmax attention over the KV cache, chosen by name (`attention(..., impl)`): the library
    kernel, spelled out, FlexAttention, or splitkv's kernel.
splitkv: decode attention as a split-KV Triton kernel (`impl="triton"`, or `"auto"` for one-row calls).
gemv: y = x W^T (+ b) for the few rows of a decode step, as one Triton kernel (`linear(..., impl="triton")`).
rmsnorm: RMSNorm as torch ops or as one Triton kernel the compiler cannot fold into the next GEMV
    (`rms_norm(..., impl="triton")`).
triton_env: what the Triton kernels share (the package with a clear error, the CPU interpreter switch).
"""
