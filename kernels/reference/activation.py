"""Activation reference kernels for gated and plain MLPs."""
from __future__ import annotations

import numpy as np

_SQRT_2_OVER_PI = np.float32(0.7978845608028654)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1.0) + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    inner = _SQRT_2_OVER_PI * (x + np.float32(0.044715) * x * x * x)
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(inner))


def swiglu(
    gate_up: np.ndarray,  # [num_tokens, 2 * ffn] float32: gate columns first, then up
) -> np.ndarray:  # [num_tokens, ffn] float32
    ffn = gate_up.shape[-1] // 2
    gate, up = gate_up[:, :ffn], gate_up[:, ffn:]
    return silu(gate) * up


def geglu(
    gate_up: np.ndarray,  # [num_tokens, 2 * ffn] float32: gate columns first, then up
) -> np.ndarray:  # [num_tokens, ffn] float32
    ffn = gate_up.shape[-1] // 2
    return gelu_tanh(gate_up[:, :ffn]) * gate_up[:, ffn:]
