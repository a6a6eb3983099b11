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


def rope_write_kv(
    q: cupy.ndarray,  # [num_tokens, num_heads, head_dim] float32 (may be a row-strided view)
    k: cupy.ndarray,  # [num_tokens, num_kv_heads, head_dim] float32 (may be a row-strided view)
    v: cupy.ndarray,  # [num_tokens, num_kv_heads, head_dim] float32 (may be a row-strided view)
    cos: cupy.ndarray,  # [num_tokens, rope_dim // 2] float32
    sin: cupy.ndarray,  # [num_tokens, rope_dim // 2] float32
    style: str,
    k_cache: cupy.ndarray,  # [num_blocks, block_size, num_kv_heads, head_dim] float16
    v_cache: cupy.ndarray,  # [num_blocks, block_size, num_kv_heads, head_dim] float16
    slot_mapping: cupy.ndarray,  # [num_tokens] int64
) -> cupy.ndarray:  # [num_tokens, num_heads, head_dim] float32: q rotated
    """apply_rope(q), apply_rope(k) and write_kv(k, v) in one launch, with the same results."""
    if style not in ("normal", "neox"):
        raise ValueError(f"unknown rope style {style!r} (normal, neox)")
    if not (k_cache.flags.c_contiguous and v_cache.flags.c_contiguous
            and k_cache.dtype == np.float16 and v_cache.dtype == np.float16):
        raise ValueError("rope_write_kv needs contiguous float16 caches")
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    if k.shape != v.shape or k.shape[0] != num_tokens or k.shape[2] != head_dim:
        raise ValueError(f"rope_write_kv: q {q.shape}, k {k.shape} and v {v.shape} do not match")
    if cos.shape != sin.shape or cos.shape[0] != num_tokens or 2 * cos.shape[1] > head_dim:
        raise ValueError(f"rope_write_kv: cos/sin {cos.shape} / {sin.shape} do not fit {num_tokens} tokens "
                         f"of head_dim {head_dim}")
    if slot_mapping.shape != (num_tokens,):
        raise ValueError(f"rope_write_kv: slot_mapping {slot_mapping.shape} for {num_tokens} tokens")
    if k_cache.shape[2:] != (num_kv_heads, head_dim) or v_cache.shape != k_cache.shape:
        raise ValueError(f"rope_write_kv: caches {k_cache.shape} / {v_cache.shape} do not hold "
                         f"{num_kv_heads} heads of {head_dim}")
    q, q_stride = as_rows(q, num_heads * head_dim)
    k, k_stride = as_rows(k, num_kv_heads * head_dim)
    v, v_stride = as_rows(v, num_kv_heads * head_dim)
    out = cupy.empty((num_tokens, num_heads, head_dim), dtype=np.float32)
    total = num_tokens * (num_heads + 2 * num_kv_heads) * head_dim
    if total:
        launch("rope.cu", f"rope_write_kv<{int(style == 'neox')}>", (blocks_for(total, 256),), (256,),
               (q, np.int64(q_stride), k, np.int64(k_stride), v, np.int64(v_stride),
                cupy.ascontiguousarray(cos, np.float32), cupy.ascontiguousarray(sin, np.float32),
                cupy.ascontiguousarray(slot_mapping, dtype=np.int64), np.int32(num_tokens),
                np.int32(num_heads), np.int32(num_kv_heads), np.int32(head_dim), np.int32(2 * cos.shape[1]),
                out, k_cache, v_cache))
    return out
