"""MLP activation launchers: SwiGLU, GeGLU (gate columns first, then up) and tanh-GELU."""
from __future__ import annotations

import cupy
import numpy as np

from .arrays import contiguous_f32
from .module_cache import blocks_for, launch


def _gated(gate_up: cupy.ndarray, use_gelu: int) -> cupy.ndarray:
    gate_up = contiguous_f32(gate_up)
    num_tokens, ffn = gate_up.shape[0], gate_up.shape[1] // 2
    out = cupy.empty((num_tokens, ffn), dtype=np.float32)
    if num_tokens * ffn:
        launch("gated_activation.cu", f"gated_activation<{use_gelu}>", (blocks_for(num_tokens * ffn, 256),),
               (256,), (gate_up, np.int32(num_tokens), np.int32(ffn), out))
    return out


def swiglu(
    gate_up: cupy.ndarray,  # [num_tokens, 2 * ffn] float32
) -> cupy.ndarray:  # [num_tokens, ffn] float32
    return _gated(gate_up, 0)


def geglu(
    gate_up: cupy.ndarray,  # [num_tokens, 2 * ffn] float32
) -> cupy.ndarray:  # [num_tokens, ffn] float32
    return _gated(gate_up, 1)


def gelu(
    x: cupy.ndarray,  # any shape, float32
) -> cupy.ndarray:  # same shape, float32
    x = contiguous_f32(x)
    out = cupy.empty_like(x)
    if x.size:
        launch("gated_activation.cu", "gelu", (blocks_for(x.size, 256),), (256,),
               (x, np.int64(x.size), out))
    return out
