"""Rotary position embedding launchers (cos/sin table on the device, normal or neox rotation).

The per-pair frequencies (freq factors, YaRN blend) are a few dozen float64 values computed once on
the host by the reference's `rope_inv_freq`; the table and the rotation run on the device."""
from __future__ import annotations

import cupy
import numpy as np

from ..reference.rope import YarnScaling, rope_inv_freq
from .arrays import as_rows
from .module_cache import blocks_for, launch

_inv_freq_cache: dict[tuple, cupy.ndarray] = {}


def _inv_freq(rope_dim: int, theta: float, freq_factors: np.ndarray | None,
              yarn: YarnScaling | None) -> cupy.ndarray:
    """[rope_dim // 2] float64 on the device, computed on the host by the reference's own formula."""
    factors = None if freq_factors is None else np.asarray(cupy.asnumpy(freq_factors), np.float64)
    key = (cupy.cuda.Device().id, rope_dim, float(theta), None if factors is None else factors.tobytes(), yarn)
    cached = _inv_freq_cache.get(key)
    if cached is None:
        cached = _inv_freq_cache[key] = cupy.asarray(rope_inv_freq(rope_dim, theta, factors, yarn))
    return cached


def rope_cos_sin(
    positions: cupy.ndarray,  # [num_tokens] int
    rope_dim: int,
    theta: float,
    freq_factors: np.ndarray | None = None,  # [rope_dim // 2] float32 (host or device)
    scale: float = 1.0,
    yarn: YarnScaling | None = None,
) -> tuple[cupy.ndarray, cupy.ndarray]:  # cos, sin: [num_tokens, rope_dim // 2] float32
    positions = cupy.ascontiguousarray(cupy.asarray(positions), dtype=np.int32)
    num_tokens, half = positions.shape[0], rope_dim // 2
    cos = cupy.empty((num_tokens, half), dtype=np.float32)
    sin = cupy.empty((num_tokens, half), dtype=np.float32)
    magnitude = 1.0 if yarn is None else yarn.magnitude
    if num_tokens:
        launch("rope.cu", "rope_cos_sin", (blocks_for(num_tokens * half, 256),), (256,),
               (positions, _inv_freq(rope_dim, theta, freq_factors, yarn), np.int32(num_tokens),
                np.int32(half), np.float64(scale), np.float64(magnitude), cos, sin))
    return cos, sin


def apply_rope(
    x: cupy.ndarray,  # [num_tokens, num_heads, head_dim] float32 (may be a row-strided view)
    cos: cupy.ndarray,  # [num_tokens, rope_dim // 2] float32
    sin: cupy.ndarray,  # [num_tokens, rope_dim // 2] float32
    style: str,
) -> cupy.ndarray:  # [num_tokens, num_heads, head_dim] float32 (a new array)
    if style not in ("normal", "neox"):
        raise ValueError(f"unknown rope style {style!r} (normal, neox)")
    num_tokens, num_heads, head_dim = x.shape
    x, stride = as_rows(x, num_heads * head_dim)
    out = cupy.empty((num_tokens, num_heads, head_dim), dtype=np.float32)
    total = num_tokens * num_heads * head_dim
    if total:
        launch("rope.cu", f"apply_rope<{int(style == 'neox')}>", (blocks_for(total, 256),), (256,),
               (x, np.int64(stride), cupy.ascontiguousarray(cos, np.float32),
                cupy.ascontiguousarray(sin, np.float32), np.int32(num_tokens), np.int32(num_heads),
                np.int32(head_dim), np.int32(2 * cos.shape[1]), out))
    return out
