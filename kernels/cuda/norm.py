"""RMSNorm (plain, fused with the residual add, per head) and LayerNorm (plain or fused with the
residual add) launchers."""
from __future__ import annotations

import cupy
import numpy as np

from .arrays import as_rows, contiguous_f32, optional
from .linear import codes_for_producer
from .module_cache import launch
from .q8_activations import Q8Activations


# rms_norm keeps ELEMS values per thread in registers (norm.cu): the smallest ELEMS whose CTA
# fits 1024 threads, so a small model's row (576) is 576 threads of one value each. 16 values at
# 1024 threads is the register limit (64 a thread, no spills on sm_90): hidden <= 16384.
RMS_NORM_ELEMS = (1, 2, 4, 8, 16)
RMS_NORM_MAX_THREADS = 1024
RMS_NORM_MAX_HIDDEN = RMS_NORM_ELEMS[-1] * RMS_NORM_MAX_THREADS


def _threads(hidden: int) -> int:  # layer_norm (a strided loop: any width)
    return 1024 if hidden >= 4096 else 256


def rms_norm_shape(hidden: int) -> tuple[int, int]:
    """(values per thread, threads per CTA) of the rms_norm launch for rows of `hidden` values:
    whole warps, so each warp holds whole q8_32 blocks (norm.cu)."""
    for elems in RMS_NORM_ELEMS:
        if hidden <= elems * RMS_NORM_MAX_THREADS:
            return elems, max(32, 32 * -(-hidden // (32 * elems)))
    raise ValueError(f"CUDA rms_norm supports rows of at most {RMS_NORM_MAX_HIDDEN} values, got {hidden}")


def _rms_norm(
    x: cupy.ndarray,  # [num_tokens, hidden] float32
    residual: cupy.ndarray | None,  # [num_tokens, hidden] float32
    weight: cupy.ndarray,  # [hidden] float32
    eps: float,
    quantize_for,  # the weight the result feeds, or None
) -> tuple[cupy.ndarray | Q8Activations, cupy.ndarray | None]:  # (normed, x + residual or None)
    num_tokens, hidden = x.shape
    x, stride = as_rows(x, hidden)
    out = cupy.empty((num_tokens, hidden), dtype=np.float32)
    summed = None if residual is None else cupy.empty((num_tokens, hidden), dtype=np.float32)
    codes, scales = codes_for_producer(quantize_for, num_tokens, hidden)
    elems, threads = rms_norm_shape(hidden)
    if num_tokens:
        launch("norm.cu", f"rms_norm<{int(codes is not None)}, {elems}>", (num_tokens,), (threads,),
               (x, np.int64(stride), optional(residual), contiguous_f32(weight), np.int32(hidden),
                np.float32(eps), out, optional(summed), optional(codes, np.int8),
                optional(scales)))
    return (out if codes is None else Q8Activations(out, codes, scales)), summed


def rms_norm(
    x: cupy.ndarray,  # [num_tokens, hidden] float32
    weight: cupy.ndarray,  # [hidden] float32
    eps: float,
    quantize_for=None,  # the weight `linear` multiplies the result with, if it is only fed there
) -> cupy.ndarray | Q8Activations:  # [num_tokens, hidden] float32
    """RMSNorm of each row. With `quantize_for` a weight whose decode GEMV reads q8_32 codes (see
    `linear.takes_q8_codes`), the same launch also emits the codes: the result is then a
    `Q8Activations` (same float values), to be passed to `linear` only."""
    return _rms_norm(x, None, weight, eps, quantize_for)[0]


def add_rms_norm(
    x: cupy.ndarray,  # [num_tokens, hidden] float32: the new branch output
    residual: cupy.ndarray,  # [num_tokens, hidden] float32: the running residual stream
    weight: cupy.ndarray,  # [hidden] float32
    eps: float,
    quantize_for=None,  # as for rms_norm
) -> tuple[cupy.ndarray | Q8Activations, cupy.ndarray]:  # (normed, x + residual), each [num_tokens, hidden]
    return _rms_norm(x, contiguous_f32(residual), weight, eps, quantize_for)


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
