"""Activations that arrive with their q8_32 rounding already done.

A decode step's int8 GEMVs (Q4_0/Q4_1/Q5_x/Q8_0 weights) multiply q8_32 codes, not floats. The
op that produces a GEMV's input (RMSNorm, SwiGLU) can emit those codes in the same launch, saving
the standalone `quantize_q8_32` launch before the qkv, gate_up and down GEMVs. Such an op returns
a `Q8Activations`; `linear` reads its codes on the GEMV path and its float values elsewhere.
The model code passes the object on untouched: it only ever reaches `ops.linear`.
"""
from __future__ import annotations

from dataclasses import dataclass

import cupy
import numpy as np


@dataclass(frozen=True, eq=False)
class Q8Activations:
    values: cupy.ndarray  # [num_tokens, num_features] float32, contiguous
    codes: cupy.ndarray  # [num_tokens, num_features] int8: exactly quantize_q8_32(values)[0]
    scales: cupy.ndarray  # [num_tokens, num_features // 32] float32: exactly quantize_q8_32(values)[1]

    def __post_init__(self) -> None:
        num_tokens, num_features = self.values.shape
        if (self.values.dtype != np.float32 or self.codes.dtype != np.int8
                or self.scales.dtype != np.float32):
            raise ValueError("Q8Activations: values float32, codes int8, scales float32")
        if self.codes.shape != self.values.shape or self.scales.shape != (num_tokens, num_features // 32):
            raise ValueError(f"Q8Activations: codes {self.codes.shape} / scales {self.scales.shape} do not "
                             f"match values {self.values.shape}")
        if num_features % 32:
            raise ValueError(f"Q8Activations: {num_features} features is not a whole number of 32-blocks")

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape


def empty_codes(num_tokens: int, num_features: int) -> tuple[cupy.ndarray, cupy.ndarray]:
    """Uninitialized (codes [num_tokens, num_features] int8, scales [num_tokens, num_features // 32]
    float32) for a producer kernel to fill."""
    return (cupy.empty((num_tokens, num_features), dtype=np.int8),
            cupy.empty((num_tokens, num_features // 32), dtype=np.float32))
