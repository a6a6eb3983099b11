"""Linear layers over weights kept dequantized in float32 on the CPU.

Weights are `[out_features, in_features]` C-contiguous, so `x @ w.T` is one BLAS call reading
the matrix once, row after row: for batch-1 decode that read is the whole cost.

Activation rounding: ggml multiplies a quantized weight by activations that it first quantizes
to 8 bits (Q8_0/Q8_1 blocks of 32 with an fp16 scale for the legacy formats, Q8_K blocks of 256
with an fp32 scale for the k-quants), and by fp16 activations for an fp16 weight. The reference
rounds the activations the same way before the float matmul, so its logits track llama.cpp's
(the goldens' top-2 gaps are often only a few tenths of a nat).
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .dequant import dequantize

_Q8_BLOCK32_TYPES = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.MXFP4}
_Q8_BLOCK256_TYPES = {T.Q4_K, T.Q5_K, T.Q6_K}


def activation_rounding(ggml_type: int) -> str:
    """How ggml rounds the activations that meet a weight of this type."""
    ggml_type = T(ggml_type)
    if ggml_type in _Q8_BLOCK32_TYPES:
        return "q8_32"
    if ggml_type in _Q8_BLOCK256_TYPES:
        return "q8_256"
    if ggml_type in (T.F16, T.BF16):
        return "f16" if ggml_type == T.F16 else "bf16"
    return "none"


def round_activations(
    x: np.ndarray,  # [num_tokens, in_features] float32
    rounding: str,
) -> np.ndarray:  # [num_tokens, in_features] float32
    if rounding == "none":
        return x
    if rounding == "f16":
        return x.astype(np.float16).astype(np.float32)
    if rounding == "bf16":
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # round to nearest even
        return rounded.astype(np.uint32).view(np.float32)
    block = 32 if rounding == "q8_32" else 256
    num_tokens, in_features = x.shape
    blocks = x.reshape(num_tokens, in_features // block, block)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    scale = amax / np.float32(127.0)
    inv = np.divide(np.float32(1.0), scale, out=np.zeros_like(scale), where=scale > 0)
    q = np.rint(blocks * inv)
    if rounding == "q8_32":
        scale = scale.astype(np.float16).astype(np.float32)  # block_q8_0/q8_1 keep d in fp16
    return (q * scale).reshape(num_tokens, in_features)


class DenseWeight:
    """A weight matrix resident as float32 `[out_features, in_features]`."""

    def __init__(self, matrix: np.ndarray, rounding: str = "none") -> None:
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.out_features, self.in_features = self.matrix.shape
        self.rounding = rounding

    @property
    def num_bytes(self) -> int:
        return self.matrix.nbytes


def load_weight(
    raw_parts: list[np.ndarray],  # each [rows_i, row_bytes] uint8 (or typed), stacked on rows
    ggml_types: list[int],
    in_features: int,
) -> DenseWeight:
    roundings = {activation_rounding(t) for t in ggml_types}
    if len(roundings) != 1:
        raise ValueError(f"cannot fuse weights with different activation rounding {sorted(roundings)}")
    parts = [dequantize(raw, t, in_features) for raw, t in zip(raw_parts, ggml_types)]
    matrix = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return DenseWeight(matrix, roundings.pop())


def can_fuse(ggml_types: list[int]) -> bool:
    return len({activation_rounding(t) for t in ggml_types}) == 1


# BLAS picks kernels and blockings by the number of rows, so a row's result would depend on how
# many other rows share its call: batch invariance (a sequence gets bit-identical logits alone or
# among others, chunked or after a prefix-cache hit) needs each row to go through a kernel chosen
# by the row alone. Generated tokens (decode) go one by one through GEMV, which is 2.4x faster than
# a small GEMM here (OpenBLAS packs the whole weight for every GEMM call); prompt rows go through
# GEMM in fixed tiles of ROW_TILE rows (the last zero-padded), whose per-row result is the same
# at any position of the tile. The row's role is a property of the request (position past its
# prompt or not), so it is the same however the batch is built. tests/unit checks the property.
ROW_TILE = 8


def linear(
    x: np.ndarray,  # [num_tokens, in_features] float32
    weight: DenseWeight,
    bias: np.ndarray | None = None,  # [out_features] float32
    generated_rows: np.ndarray | None = None,  # [num_tokens] bool: rows that take the GEMV path
) -> np.ndarray:  # [num_tokens, out_features] float32
    rounded = round_activations(x, weight.rounding)
    num_tokens = rounded.shape[0]
    out = np.empty((num_tokens, weight.out_features), dtype=np.float32)
    matrix_t = weight.matrix.T
    if generated_rows is None:
        generated_rows = np.zeros(num_tokens, dtype=bool)
    for row in np.flatnonzero(generated_rows):
        np.matmul(rounded[row], matrix_t, out=out[row])
    prompt_rows = np.flatnonzero(~generated_rows)
    for begin in range(0, len(prompt_rows), ROW_TILE):
        rows = prompt_rows[begin : begin + ROW_TILE]
        tile = np.zeros((ROW_TILE, rounded.shape[1]), dtype=np.float32)
        tile[: len(rows)] = rounded[rows]
        out[rows] = (tile @ matrix_t)[: len(rows)]
    return out + bias if bias is not None else out


def embedding(
    weight: DenseWeight,  # rows are tokens: [vocab_size, hidden]
    token_ids: np.ndarray,  # [num_tokens] int
) -> np.ndarray:  # [num_tokens, hidden] float32
    return weight.matrix[token_ids]
