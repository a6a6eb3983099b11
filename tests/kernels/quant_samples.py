"""Random GGUF weights for kernel tests: random bytes in each block format with sane scales."""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

# Byte offsets of each block's fp16 scale fields (random bytes there would give inf/NaN/huge).
_FP16_FIELDS = {
    T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
    T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
}


def random_weight(ggml_type: int, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """[rows, row_bytes] uint8 blocks (or float32/float16 [rows, cols] for F32/F16), as GGUF stores."""
    ggml_type = T(ggml_type)
    if ggml_type == T.F32:
        return rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.05)
    if ggml_type == T.F16:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float16)
    if ggml_type == T.BF16:
        values = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        return (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(rows, -1)
    block_values, block_bytes = GGML_QUANT_SIZES[ggml_type]
    num_blocks = rows * cols // block_values
    blocks = rng.integers(0, 256, size=(num_blocks, block_bytes), dtype=np.uint8)
    for offset in _FP16_FIELDS.get(ggml_type, ()):
        scales = rng.uniform(0.002, 0.02, size=num_blocks).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(num_blocks, 2)
    if ggml_type == T.MXFP4:
        blocks[:, 0] = rng.integers(118, 128, size=num_blocks, dtype=np.uint8)
    return blocks.reshape(rows, -1)


def rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """||actual - expected|| / ||expected|| in float64; NaN anywhere fails (returns inf)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if not np.all(np.isfinite(actual)):
        return float("inf")
    norm = np.linalg.norm(expected)
    return float(np.linalg.norm(actual - expected) / (norm if norm > 0 else 1.0))


def outlier_activations(rng, num_tokens: int, width: int) -> np.ndarray:  # [num_tokens, width] float32
    """Random activations with an outlier block (as SmolLM2's massive activations) and, from 64
    columns on, an all-zero 32-block (q8_32 scale 0, codes 0)."""
    x = rng.standard_normal((num_tokens, width), dtype=np.float32)
    x[:, : max(1, width // 9)] *= 40.0
    if width >= 64:
        x[:, 32:64] = 0.0
    return x
