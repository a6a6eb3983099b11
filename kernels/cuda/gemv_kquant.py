"""The int8 (dp4a) GEMV of the k-quants (gemv_kquant.cu) and its activation quantization.

`quantize_q8_256` turns a small batch of activations into q8_256 codes once per linear: the
codes and scales the reference's `round_activations(x, "q8_256")` multiplies back (code * scale
equals it bit for bit), plus each 32 codes' sum for the Q4_K/Q5_K mins. `gemv_kquant` then
multiplies one weight segment with them, every token of the tile per weight read.
"""
from __future__ import annotations

from typing import NamedTuple

import cupy
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from .module_cache import blocks_for, launch
from .weights import WeightSegment

# Weight types whose 256-value super-blocks meet q8_256 codes in an exact int8 dot.
KQUANT_DOT_TYPES = frozenset({T.Q4_K, T.Q5_K, T.Q6_K})
KQUANT_MAX_TOKENS = 8  # the kernel's NUM_TOKENS template bound (one launch per tile)
KQUANT_WARPS_PER_CTA = 4
# Rows per warp: more rows share each activation load (the L1 traffic that bounds large tiles)
# but use more registers and leave fewer warps for short matrices. Not yet tuned on a GPU:
# benchmarks/gemv_kquant_bench.py times 1, 2 and 4.
KQUANT_ROWS_PER_WARP_BY_TOKENS = {1: 1, 2: 1}
KQUANT_DEFAULT_ROWS_PER_WARP = 2
KQUANT_ROWS_PER_WARP_CHOICES = (1, 2, 4)


class Q8x256(NamedTuple):
    codes: cupy.ndarray  # [num_tokens, in_features] int8
    scales: cupy.ndarray  # [num_tokens, in_features / 256] float32
    sums: cupy.ndarray  # [num_tokens, in_features / 32] int32


def quantize_q8_256(
    x: cupy.ndarray,  # [num_tokens, in_features] float32, contiguous, in_features % 256 == 0
) -> Q8x256:
    num_tokens, num_cols = x.shape
    if num_cols % 256:
        raise ValueError(f"q8_256 activation codes need in_features % 256 == 0, got {num_cols}")
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        raise ValueError("quantize_q8_256 needs a contiguous float32 array")
    codes = cupy.empty((num_tokens, num_cols), dtype=np.int8)
    scales = cupy.empty((num_tokens, num_cols // 256), dtype=np.float32)
    sums = cupy.empty((num_tokens, num_cols // 32), dtype=np.int32)
    if num_tokens:
        launch("gemv_kquant.cu", "quantize_q8_256", (num_cols // 256, num_tokens), (256,),
               (x, np.int32(num_cols), codes, scales, sums))
    return Q8x256(codes, scales, sums)


def gemv_kquant(
    seg: WeightSegment,  # raw: [num_rows, row_bytes] uint8 super-blocks of a KQUANT_DOT_TYPES type
    activations: Q8x256,  # of [num_tokens <= KQUANT_MAX_TOKENS, in_features]
    bias: cupy.ndarray | None,  # [>= num_rows] float32 (the segment's part), or None
    out: cupy.ndarray,  # [num_tokens, >= num_rows] float32 view; row r of the weight -> column r
    out_stride: int,  # elements between two tokens' rows of `out`
    rows_per_warp: int | None = None,  # None: the tuned choice for the token count
) -> None:
    num_tokens, num_cols = activations.codes.shape
    if seg.ggml_type not in KQUANT_DOT_TYPES:
        raise ValueError(f"gemv_kquant has no kernel for {T(seg.ggml_type).name}")
    if not 1 <= num_tokens <= KQUANT_MAX_TOKENS:
        raise ValueError(f"gemv_kquant takes 1..{KQUANT_MAX_TOKENS} tokens, got {num_tokens}")
    num_blocks = num_cols // 256
    if seg.raw.dtype != np.uint8 or seg.row_bytes != num_blocks * GGML_QUANT_SIZES[T(seg.ggml_type)][1]:
        raise ValueError(f"weight rows of {seg.row_bytes} bytes do not hold {num_cols} {T(seg.ggml_type).name} values")
    if seg.raw.data.ptr % 16 or not seg.raw.flags.c_contiguous:
        raise ValueError("gemv_kquant needs contiguous weight rows starting at a 16-byte boundary")
    if rows_per_warp is None:
        rows_per_warp = KQUANT_ROWS_PER_WARP_BY_TOKENS.get(num_tokens, KQUANT_DEFAULT_ROWS_PER_WARP)
    if rows_per_warp not in KQUANT_ROWS_PER_WARP_CHOICES:
        raise ValueError(f"rows_per_warp must be one of {KQUANT_ROWS_PER_WARP_CHOICES}")
    grid = (blocks_for(seg.num_rows, KQUANT_WARPS_PER_CTA * rows_per_warp),)
    launch("gemv_kquant.cu", f"gemv_kquant<{int(seg.ggml_type)}, {num_tokens}, {rows_per_warp}>",
           grid, (32 * KQUANT_WARPS_PER_CTA,),
           (seg.raw, np.int64(seg.row_bytes), np.int32(seg.num_rows), np.int32(num_blocks),
            activations.codes, activations.scales, activations.sums,
            bias if bias is not None else np.uint64(0), out, np.int64(out_stride)))
