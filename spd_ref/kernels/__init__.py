"""Kernels the runtime may call in place of a torch op: a leaf below the core (imports nothing from spd_ref).

attention: softmax attention over the KV cache, the library kernel or spelled out (`attention(..., impl)`).
gemv: y = x W^T (+ b) for the few rows of a decode step, as one Triton kernel (`linear(..., impl="triton")`).
"""
