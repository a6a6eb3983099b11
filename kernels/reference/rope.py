"""Rotary position embedding reference kernel.

`normal` rotates adjacent pairs (x[2i], x[2i+1]) — the GGUF llama layout, whose converter permutes
Q/K rows for it; `neox` rotates halves (x[i], x[i + rot/2]). Only the first `rope_dim` features of
each head rotate. `freq_factors` (llama3 rope scaling) divide the per-pair frequencies; `yarn`
(YaRN context extension, gpt-oss) blends each pair's interpolated and original frequency and
scales the table's magnitude.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .attention import write_kv


@dataclass(frozen=True)
class YarnScaling:
    """YaRN rope scaling as llama.cpp applies it (ggml's rope_yarn with ext_factor 1).

    Pair i rotates at `base**(-2i/rope_dim) * (s * (1 - ramp_i) + ramp_i)` with s = 1/factor, where
    ramp_i falls linearly from 1 (pairs below the `beta_fast` correction dimension keep their
    original frequency) to 0 (pairs above the `beta_slow` one are fully interpolated); the
    correction dimensions are floored / ceiled as ggml does. cos and sin are multiplied by
    `magnitude`: (0.1 ln(factor) + 1) * attn_factor, or, when the file gives a
    `yarn_log_multiplier` m, that over (0.1 m ln(factor) + 1) (llama.cpp's llama-context rule).
    """

    factor: float  # context extension factor (gpt-oss: 32)
    original_context: int  # the context the model was trained at before extension (4096)
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attn_factor: float = 1.0  # rope.scaling.attn_factor
    log_multiplier: float = 0.0  # rope.scaling.yarn_log_multiplier (0 = none)

    def __post_init__(self) -> None:
        if not self.factor >= 1.0:
            raise ValueError(f"YaRN factor must be >= 1, got {self.factor}")
        if int(self.original_context) <= 0:
            raise ValueError(f"YaRN original context must be positive, got {self.original_context}")
        if not self.beta_fast > 0 or not self.beta_slow > 0:
            raise ValueError(f"YaRN betas must be positive, got fast {self.beta_fast} slow {self.beta_slow}")

    def _correction_dim(self, rope_dim: int, theta: float, rotations: float) -> float:
        return rope_dim * math.log(self.original_context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    def pair_scales(self, rope_dim: int, theta: float) -> np.ndarray:  # [rope_dim // 2] float64
        """Multiplier of each pair's unscaled frequency."""
        low = max(0.0, math.floor(self._correction_dim(rope_dim, theta, self.beta_fast)))
        high = min(rope_dim - 1.0, math.ceil(self._correction_dim(rope_dim, theta, self.beta_slow)))
        pairs = np.arange(rope_dim // 2, dtype=np.float64)
        ramp = 1.0 - np.clip((pairs - low) / max(0.001, high - low), 0.0, 1.0)
        return (1.0 / self.factor) * (1.0 - ramp) + ramp

    @property
    def magnitude(self) -> float:
        def mscale(m: float) -> float:
            return 1.0 if self.factor <= 1.0 else 0.1 * m * math.log(self.factor) + 1.0

        base = mscale(1.0) / mscale(self.log_multiplier) if self.log_multiplier else mscale(1.0)
        return base * self.attn_factor


def rope_inv_freq(
    rope_dim: int,
    theta: float,
    freq_factors: np.ndarray | None = None,  # [rope_dim // 2]
    yarn: YarnScaling | None = None,
) -> np.ndarray:  # [rope_dim // 2] float64: radians per position of each pair
    exponents = np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim
    inv_freq = 1.0 / (theta**exponents)
    if freq_factors is not None:
        inv_freq = inv_freq / np.asarray(freq_factors, dtype=np.float64)
    if yarn is not None:
        inv_freq = inv_freq * yarn.pair_scales(rope_dim, theta)
    return inv_freq


def rope_cos_sin(
    positions: np.ndarray,  # [num_tokens] int
    rope_dim: int,
    theta: float,
    freq_factors: np.ndarray | None = None,  # [rope_dim // 2] float32
    scale: float = 1.0,
    yarn: YarnScaling | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # cos, sin: [num_tokens, rope_dim // 2] float32
    inv_freq = rope_inv_freq(rope_dim, theta, freq_factors, yarn)
    angles = (positions.astype(np.float64)[:, None] * scale) * inv_freq[None, :]
    magnitude = 1.0 if yarn is None else yarn.magnitude
    return (np.cos(angles) * magnitude).astype(np.float32), (np.sin(angles) * magnitude).astype(np.float32)


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


def rope_write_kv(
    q: np.ndarray,  # [num_tokens, num_heads, head_dim] float32
    k: np.ndarray,  # [num_tokens, num_kv_heads, head_dim] float32
    v: np.ndarray,  # [num_tokens, num_kv_heads, head_dim] float32
    cos: np.ndarray,  # [num_tokens, rope_dim // 2] float32
    sin: np.ndarray,  # [num_tokens, rope_dim // 2] float32
    style: str,
    k_cache: np.ndarray,  # [num_blocks, block_size, num_kv_heads, head_dim] float16, written
    v_cache: np.ndarray,  # [num_blocks, block_size, num_kv_heads, head_dim] float16, written
    slot_mapping: np.ndarray,  # [num_tokens] int64
) -> np.ndarray:  # [num_tokens, num_heads, head_dim] float32: q rotated
    """Rotate q and k and write k, v into the paged cache: the contract of the CUDA twin, which does
    it in one launch (the decode step is bound by its kernel count)."""
    write_kv(k_cache, v_cache, apply_rope(k, cos, sin, style), v, slot_mapping)
    return apply_rope(q, cos, sin, style)
