"""Row and column slices of a GGUF tensor's raw block data, still quantized.

A GGUF matrix is stored row after row; each row is a run of blocks of `block_size` columns
encoded in `type_size` bytes (F32/F16/BF16 are blocks of one column). So any set of rows is a
byte slice, and a column range is a byte range of every row provided it starts and ends on a
block boundary: a block cannot be cut. These slices are what a tensor-parallel rank loads, and
`ops.load_weight` dequantizes or uploads them exactly as it would a whole tensor.
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


class ShardingError(ValueError):
    """A tensor cannot be split the way tensor parallelism needs (the message says why)."""


def block_shape(ggml_type: int) -> tuple[int, int]:
    """(columns per block, bytes per block) of a GGML type."""
    return GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]


def slice_rows(
    raw: np.ndarray,  # [num_rows, row_bytes] uint8
    row_ranges: list[tuple[int, int]],  # half-open [begin, end) ranges, taken in this order
) -> np.ndarray:  # [sum of range lengths, row_bytes] uint8
    """Rows of a tensor; a single range stays a zero-copy view of the memory-mapped file."""
    for begin, end in row_ranges:
        if not 0 <= begin < end <= raw.shape[0]:
            raise ShardingError(f"row range [{begin}, {end}) is outside 0..{raw.shape[0]}")
    if len(row_ranges) == 1:
        begin, end = row_ranges[0]
        return raw[begin:end]
    return np.concatenate([raw[begin:end] for begin, end in row_ranges], axis=0)


def slice_columns(
    raw: np.ndarray,  # [num_rows, row_bytes] uint8
    ggml_type: int,
    num_cols: int,  # the tensor's in_features
    begin: int,
    end: int,
    tensor_name: str = "tensor",
) -> np.ndarray:  # [num_rows, (end - begin) / block_size * type_size] uint8, contiguous
    """Columns [begin, end) of every row; both ends must fall on the type's block boundaries."""
    block_size, type_size = block_shape(ggml_type)
    if not 0 <= begin < end <= num_cols:
        raise ShardingError(f"{tensor_name}: column range [{begin}, {end}) is outside 0..{num_cols}")
    if begin % block_size or end % block_size:
        raise ShardingError(
            f"{tensor_name}: a tensor-parallel split at columns [{begin}, {end}) cuts a "
            f"{GGMLQuantizationType(ggml_type).name} block of {block_size} columns; use another "
            f"--tensor-parallel-size or a file whose split tensors use {block_size}-aligned shards")
    first, last = begin // block_size * type_size, end // block_size * type_size
    return np.ascontiguousarray(raw[:, first:last])
