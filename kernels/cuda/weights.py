"""Weights resident on the GPU in their GGUF block format (never dequantized in memory).

`load_weight` uploads each part's raw block bytes with chunked host-to-device copies and keeps
parts that share a type in one buffer (rows concatenated). A fused weight (q|k|v, gate|up) whose
parts have different types keeps one segment per run of equal types; `linear` writes each
segment's rows into its own output columns. Parts may be fused when ggml would round the
activations the same way for all of them (same rule as the CPU backend).
"""
from __future__ import annotations

from dataclasses import dataclass

import cupy
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from ..reference.linear import activation_rounding

GPU_TYPES = frozenset({T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
                       T.MXFP4, T.Q4_K, T.Q5_K, T.Q6_K})
# Types whose blocks of 32 meet q8_32 activations in an exact int8 dot (gemv_int8.cu).
INT8_DOT_TYPES = frozenset({T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0})
UPLOAD_CHUNK_BYTES = 64 << 20


@dataclass
class WeightSegment:
    ggml_type: T
    raw: cupy.ndarray  # [num_rows, row_bytes] uint8: the GGUF blocks as stored in the file
    row_begin: int  # first output feature of this segment
    num_rows: int

    @property
    def row_bytes(self) -> int:
        return self.raw.shape[1]


class QuantizedWeight:
    """`[out_features, in_features]` as GGUF blocks on the device, in one or more row segments."""

    def __init__(self, segments: list[WeightSegment], in_features: int, rounding: str) -> None:
        self.segments = segments
        self.in_features = in_features
        self.out_features = sum(s.num_rows for s in segments)
        self.rounding = rounding

    @property
    def num_bytes(self) -> int:
        return sum(s.raw.nbytes for s in self.segments)


def row_bytes_of(ggml_type: T, in_features: int) -> int:
    block_values, block_bytes = GGML_QUANT_SIZES[ggml_type]
    if in_features % block_values:
        raise ValueError(f"{in_features} columns is not a multiple of {ggml_type.name}'s "
                         f"{block_values}-wide blocks")
    return in_features // block_values * block_bytes


def host_bytes(raw: np.ndarray, num_rows: int, row_bytes: int) -> np.ndarray:
    """The part's bytes as [num_rows, row_bytes] uint8 without copying a memory map."""
    flat = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if flat.size != num_rows * row_bytes:
        raise ValueError(f"weight part holds {flat.size} bytes, expected {num_rows} x {row_bytes}")
    return flat.reshape(num_rows, row_bytes)


def upload_rows(parts: list[np.ndarray]) -> cupy.ndarray:
    """Concatenate [rows_i, row_bytes] uint8 host parts on the device, in bounded chunks."""
    total_rows = sum(p.shape[0] for p in parts)
    device = cupy.empty((total_rows, parts[0].shape[1]), dtype=np.uint8)
    flat = device.reshape(-1)
    offset = 0
    for part in parts:
        source = part.reshape(-1)
        for begin in range(0, source.size, UPLOAD_CHUNK_BYTES):
            piece = np.ascontiguousarray(source[begin:begin + UPLOAD_CHUNK_BYTES])
            flat[offset + begin:offset + begin + piece.size].set(piece)
        offset += source.size
    return device


def can_fuse(ggml_types: list[int]) -> bool:
    return len({activation_rounding(t) for t in ggml_types}) == 1


def load_weight(
    raw_parts: list[np.ndarray],  # each [rows_i, row_bytes] uint8 (or typed F32/F16), stacked on rows
    ggml_types: list[int],
    in_features: int,
) -> QuantizedWeight:
    types = [T(t) for t in ggml_types]
    for t in types:
        if t not in GPU_TYPES:
            raise ValueError(f"tensor type {t.name} has no CUDA kernel")
    roundings = {activation_rounding(t) for t in types}
    if len(roundings) != 1:
        raise ValueError(f"cannot fuse weights with different activation rounding {sorted(roundings)}")
    segments: list[WeightSegment] = []
    pending: list[np.ndarray] = []
    row = 0
    for index, (raw, t) in enumerate(zip(raw_parts, types)):
        row_bytes = row_bytes_of(t, in_features)
        num_rows = np.asarray(raw).reshape(-1).view(np.uint8).size // row_bytes
        pending.append(host_bytes(raw, num_rows, row_bytes))
        if index + 1 == len(types) or types[index + 1] != t:
            rows = sum(p.shape[0] for p in pending)
            segments.append(WeightSegment(t, upload_rows(pending), row, rows))
            row += rows
            pending = []
    return QuantizedWeight(segments, in_features, roundings.pop())
