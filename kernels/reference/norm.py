"""Normalization reference kernels (float32 math, like ggml)."""
from __future__ import annotations

import numpy as np


def rms_norm(
    x: np.ndarray,  # [num_tokens, hidden] float32
    weight: np.ndarray,  # [hidden] float32
    eps: float,
) -> np.ndarray:  # [num_tokens, hidden] float32
    mean_square = np.einsum("ij,ij->i", x, x, dtype=np.float32) / np.float32(x.shape[-1])
    inv = (1.0 / np.sqrt(mean_square + np.float32(eps))).astype(np.float32)
    return (x * inv[:, None]) * weight


def add_rms_norm(
    x: np.ndarray,  # [num_tokens, hidden] float32: the new branch output
    residual: np.ndarray,  # [num_tokens, hidden] float32: the running residual stream
    weight: np.ndarray,  # [hidden] float32
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:  # (normed [num_tokens, hidden], new residual [num_tokens, hidden])
    """Fused residual add + RMSNorm: returns (rms_norm(x + residual), x + residual)."""
    summed = x + residual
    return rms_norm(summed, weight, eps), summed


def head_rms_norm(
    x: np.ndarray,  # [num_tokens, num_heads, head_dim] float32
    weight: np.ndarray,  # [head_dim] float32
    eps: float,
) -> np.ndarray:  # [num_tokens, num_heads, head_dim] float32
    """Per-head RMSNorm (qk-norm)."""
    flat = x.reshape(-1, x.shape[-1])
    return rms_norm(flat, weight, eps).reshape(x.shape)


def layer_norm(
    x: np.ndarray,  # [num_tokens, hidden] float32
    weight: np.ndarray,  # [hidden] float32
    bias: np.ndarray | None,  # [hidden] float32
    eps: float,
) -> np.ndarray:  # [num_tokens, hidden] float32
    mean = x.mean(axis=-1, keepdims=True, dtype=np.float32)
    centered = x - mean
    var = (centered * centered).mean(axis=-1, keepdims=True, dtype=np.float32)
    out = centered / np.sqrt(var + np.float32(eps)) * weight
    return out + bias if bias is not None else out


def add_layer_norm(
    x: np.ndarray,  # [num_tokens, hidden] float32: the new branch output
    residual: np.ndarray,  # [num_tokens, hidden] float32: the running residual stream
    weight: np.ndarray,  # [hidden] float32
    bias: np.ndarray | None,  # [hidden] float32
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:  # (normed [num_tokens, hidden], new residual [num_tokens, hidden])
    """Fused residual add + LayerNorm: returns (layer_norm(x + residual), x + residual)."""
    summed = x + residual
    return layer_norm(summed, weight, bias, eps), summed
