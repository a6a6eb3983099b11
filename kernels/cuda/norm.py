"""RMSNorm (plain, fused with the residual add, per head) and LayerNorm (plain or fused with the
residual add) launchers."""
from __future__ import annotations

import cupy
import numpy as np

from .arrays import as_rows, contiguous_f32, optional
from .module_cache import launch


def _threads(hidden: int) -> int:
    return 1024 if hidden >= 4096 else 256


def rms_norm(
    x: cupy.ndarray,  # [num_tokens, hidden] float32
    weight: cupy.ndarray,  # [hidden] float32
    eps: float,
) -> cupy.ndarray:  # [num_tokens, hidden] float32
    num_tokens, hidden = x.shape
    x, stride = as_rows(x, hidden)
    out = cupy.empty((num_tokens, hidden), dtype=np.float32)
    if num_tokens:
        launch("norm.cu", "rms_norm", (num_tokens,), (_threads(hidden),),
               (x, np.int64(stride), np.uint64(0), contiguous_f32(weight), np.int32(hidden),
                np.float32(eps), out, np.uint64(0)))
    return out


def add_rms_norm(
    x: cupy.ndarray,  # [num_tokens, hidden] float32: the new branch output
    residual: cupy.ndarray,  # [num_tokens, hidden] float32: the running residual stream
    weight: cupy.ndarray,  # [hidden] float32
    eps: float,
) -> tuple[cupy.ndarray, cupy.ndarray]:  # (normed, x + residual), each [num_tokens, hidden]
    num_tokens, hidden = x.shape
    x, stride = as_rows(x, hidden)
    residual = contiguous_f32(residual)
    out = cupy.empty((num_tokens, hidden), dtype=np.float32)
    summed = cupy.empty((num_tokens, hidden), dtype=np.float32)
    if num_tokens:
        launch("norm.cu", "rms_norm", (num_tokens,), (_threads(hidden),),
               (x, np.int64(stride), residual, contiguous_f32(weight), np.int32(hidden),
                np.float32(eps), out, summed))
    return out, summed


def head_rms_norm(
    x: cupy.ndarray,  # [num_tokens, num_heads, head_dim] float32
    weight: cupy.ndarray,  # [head_dim] float32
    eps: float,
) -> cupy.ndarray:  # [num_tokens, num_heads, head_dim] float32
    flat = cupy.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    return rms_norm(flat, weight, eps).reshape(x.shape)


def layer_norm(
    x: cupy.ndarray,  # [num_tokens, hidden] float32
    weight: cupy.ndarray,  # [hidden] float32
    bias: cupy.ndarray | None,  # [hidden] float32
    eps: float,
) -> cupy.ndarray:  # [num_tokens, hidden] float32
    x = contiguous_f32(x)
    num_tokens, hidden = x.shape
    out = cupy.empty((num_tokens, hidden), dtype=np.float32)
    if num_tokens:
        launch("norm.cu", "layer_norm", (num_tokens,), (_threads(hidden),),
               (x, np.uint64(0), contiguous_f32(weight), optional(bias), np.int32(hidden),
                np.float32(eps), out, np.uint64(0)))
    return out


def add_layer_norm(
    x: cupy.ndarray,  # [num_tokens, hidden] float32: the new branch output
    residual: cupy.ndarray,  # [num_tokens, hidden] float32: the running residual stream
    weight: cupy.ndarray,  # [hidden] float32
    bias: cupy.ndarray | None,  # [hidden] float32
    eps: float,
) -> tuple[cupy.ndarray, cupy.ndarray]:  # (normed, x + residual), each [num_tokens, hidden]
    x = contiguous_f32(x)
    num_tokens, hidden = x.shape
    out = cupy.empty((num_tokens, hidden), dtype=np.float32)
    summed = cupy.empty((num_tokens, hidden), dtype=np.float32)
    if num_tokens:
        launch("norm.cu", "layer_norm", (num_tokens,), (_threads(hidden),),
               (x, contiguous_f32(residual), contiguous_f32(weight), optional(bias), np.int32(hidden),
                np.float32(eps), out, summed))
    return out, summed
