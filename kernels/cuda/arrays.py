"""Helpers that turn op arguments into the layouts the kernels read."""
from __future__ import annotations

import cupy
import numpy as np


def as_rows(x: cupy.ndarray, width: int) -> tuple[cupy.ndarray, int]:
    """`x` [num_rows, ...] float32 whose trailing dims hold `width` contiguous elements per row,
    and the row stride in elements. Views that are strided only on the first axis (q/k/v slices
    of a fused qkv output) are used in place; anything else is copied to a contiguous array."""
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    inner_contiguous = x.ndim >= 1 and all(
        x.strides[axis] == x.itemsize * int(np.prod(x.shape[axis + 1:], dtype=np.int64))
        for axis in range(1, x.ndim)
    )
    if not inner_contiguous or x.shape[0] == 0 or x.strides[0] % x.itemsize:
        x = cupy.ascontiguousarray(x)
    stride = x.strides[0] // x.itemsize if x.shape[0] > 1 else width
    return x, stride


def contiguous_f32(x: cupy.ndarray) -> cupy.ndarray:
    return cupy.ascontiguousarray(x, dtype=np.float32)


def optional(x: cupy.ndarray | None, dtype=np.float32):
    """A device array argument or a null pointer for the kernel."""
    if x is None:
        return np.uintp(0)
    return cupy.ascontiguousarray(x, dtype=dtype)
