"""Rotary position embedding reference kernel.

`normal` rotates adjacent pairs (x[2i], x[2i+1]) — the GGUF llama layout, whose converter permutes
Q/K rows for it; `neox` rotates halves (x[i], x[i + rot/2]). Only the first `rope_dim` features of
each head rotate. `freq_factors` (llama3 rope scaling) divide the per-pair frequencies.
"""
from __future__ import annotations

import numpy as np


def rope_cos_sin(
    positions: np.ndarray,  # [num_tokens] int
    rope_dim: int,
    theta: float,
    freq_factors: np.ndarray | None = None,  # [rope_dim // 2] float32
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:  # cos, sin: [num_tokens, rope_dim // 2] float32
    exponents = np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim
    inv_freq = 1.0 / (theta**exponents)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.astype(np.float64)
    angles = (positions.astype(np.float64)[:, None] * scale) * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(
    x: np.ndarray,  # [num_tokens, num_heads, head_dim] float32
    cos: np.ndarray,  # [num_tokens, rope_dim // 2] float32
    sin: np.ndarray,  # [num_tokens, rope_dim // 2] float32
    style: str,
) -> np.ndarray:  # [num_tokens, num_heads, head_dim] float32 (a new array)
    half = cos.shape[1]
    rope_dim = 2 * half
    out = x.copy()
    c = cos[:, None, :]
    s = sin[:, None, :]
    if style == "normal":
        x0 = x[:, :, 0:rope_dim:2]
        x1 = x[:, :, 1:rope_dim:2]
        out[:, :, 0:rope_dim:2] = x0 * c - x1 * s
        out[:, :, 1:rope_dim:2] = x0 * s + x1 * c
    elif style == "neox":
        x0 = x[:, :, :half]
        x1 = x[:, :, half:rope_dim]
        out[:, :, :half] = x0 * c - x1 * s
        out[:, :, half:rope_dim] = x0 * s + x1 * c
    else:
        raise ValueError(f"unknown rope style {style!r} (normal, neox)")
    return out
