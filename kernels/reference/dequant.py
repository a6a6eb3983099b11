"""NumPy dequantization of GGUF block formats: the specification the CUDA kernels are tested against.

Formats the `gguf` package implements are delegated to its reference dequantizers (they follow
ggml's C code bit for bit); MXFP4 is written here so its layout is spelled out in one place.
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

SUPPORTED_TYPES = frozenset(
    {
        GGMLQuantizationType.F32,
        GGMLQuantizationType.F16,
        GGMLQuantizationType.BF16,
        GGMLQuantizationType.Q8_0,
        GGMLQuantizationType.Q4_0,
        GGMLQuantizationType.Q4_1,
        GGMLQuantizationType.Q5_0,
        GGMLQuantizationType.Q5_1,
        GGMLQuantizationType.Q4_K,
        GGMLQuantizationType.Q5_K,
        GGMLQuantizationType.Q6_K,
        GGMLQuantizationType.MXFP4,
    }
)

# E2M1 code points: sign bit 3, two exponent bits, one mantissa bit (OCP microscaling spec).
_E2M1_VALUES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=np.float32,
)


def row_bytes(ggml_type: int, num_cols: int) -> int:
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    if num_cols % block_size:
        raise ValueError(f"{num_cols} columns is not a multiple of the {block_size}-wide blocks")
    return num_cols // block_size * type_size


def dequantize(
    raw: np.ndarray,  # [num_rows, row_bytes] uint8 (or a typed array for F32/F16)
    ggml_type: int,
    num_cols: int,
) -> np.ndarray:  # [num_rows, num_cols] float32
    ggml_type = GGMLQuantizationType(ggml_type)
    if ggml_type not in SUPPORTED_TYPES:
        raise ValueError(f"unsupported tensor type {ggml_type.name}")
    if ggml_type == GGMLQuantizationType.MXFP4:
        return dequantize_mxfp4(raw, num_cols)
    if ggml_type == GGMLQuantizationType.F32 and raw.dtype == np.float32:
        return np.ascontiguousarray(raw.reshape(-1, num_cols))
    if ggml_type == GGMLQuantizationType.F16 and raw.dtype == np.float16:
        return raw.reshape(-1, num_cols).astype(np.float32)
    out = quants.dequantize(np.ascontiguousarray(raw.view(np.uint8)), ggml_type)
    return np.ascontiguousarray(out.reshape(-1, num_cols), dtype=np.float32)


def dequantize_mxfp4(
    raw: np.ndarray,  # [num_rows, row_bytes] uint8; 17-byte blocks: E8M0 scale + 16 nibble bytes
    num_cols: int,
) -> np.ndarray:  # [num_rows, num_cols] float32
    """Block of 32: value j (j < 16) is the low nibble of byte j, value j + 16 the high nibble,
    each an E2M1 code scaled by 2**(e - 127) with e the block's scale byte. ggml stores the E2M1
    table doubled and halves the scale, which is the same number."""
    blocks = np.ascontiguousarray(raw.view(np.uint8)).reshape(-1, 17)
    scale = np.ldexp(np.float32(1.0), blocks[:, 0].astype(np.int32) - 127).astype(np.float32)
    nibbles = blocks[:, 1:]
    low = _E2M1_VALUES[nibbles & 0x0F]
    high = _E2M1_VALUES[nibbles >> 4]
    values = np.concatenate([low, high], axis=1) * scale[:, None]
    return values.reshape(-1, num_cols).astype(np.float32)
