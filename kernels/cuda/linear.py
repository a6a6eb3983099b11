"""Linear layers and the embedding gather over quantized device weights.

Small batches (`gemv_max_tokens(weight)`: 16 tokens, 64 for k-quant weights): fused
dequantize-GEMV tiles of 8 tokens, each reading every weight row once for its tokens. Activations are rounded as ggml rounds them (the reference's
`round_activations`): for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 into q8_32 codes + fp16 scales (by the
producer, by the GEMV launch itself for small inputs, else by a quantize launch) and an exact
int8 dot (dp4a) per block pair; for Q4_K/Q5_K/Q6_K into q8_256 codes + fp32 scales and an
exact int8 dot per sub-block (gemv_kquant.py); for the other types into float32 values and a
float dot.
Either way only the float32 summation order differs from the reference.

Large batches (prefill): the rounded activations are stored as fp16, the weight is dequantized
to fp16 in row tiles of at most TILE_ELEMENTS elements (bounded scratch), and cuBLAS multiplies
them with fp32 accumulation and an fp32 result (cublasGemmEx, tensor cores). Storing the
rounded activations and the dequantized weights in fp16 adds one rounding of at most 2^-11
relative per operand (q8 codes times an fp16 scale need up to 19 bits); the dot products
average these out to ~1e-4 of |x||w|. Rows are therefore not bit-identical between the two
paths (batch invariance holds within each path, not across the GEMV_MAX_TOKENS boundary).
"""
from __future__ import annotations

import os

import cupy
import numpy as np

from . import blas
from .gated_input import GatedInput
from .gemv_kquant import KQUANT_DOT_TYPES, gemv_kquant, quantize_q8_256
from .module_cache import blocks_for, launch
from .q8_activations import Q8Activations, empty_codes
from .weights import INT8_DOT_TYPES, QuantizedWeight

# Batches up to these sizes run as GEMV tiles of GEMV_TILE_TOKENS (each tile reads the weight
# once); larger ones dequantize the weight to fp16 + cuBLAS. Measured on the H100 (docs/
# benchmarks.md, "GEMV or dequantize + cuBLAS"): tiles win at 16 tokens for every type, and up
# to 64 for the k-quants, whose dequantize path is slow; a Q4_1 model at 64 tokens is faster
# through cuBLAS. $CUPYSERVE_GEMV_MAX_TOKENS sets both limits (for benchmarking the two paths).
_LIMIT_OVERRIDE = os.environ.get("CUPYSERVE_GEMV_MAX_TOKENS")
GEMV_MAX_TOKENS = int(_LIMIT_OVERRIDE or 16)
KQUANT_GEMV_MAX_TOKENS = int(_LIMIT_OVERRIDE or 64)  # weights made only of Q4_K/Q5_K/Q6_K
GEMV_TILE_TOKENS = 8  # tokens per GEMV launch (its NUM_TOKENS template bound)
GEMV_WARPS_PER_CTA = 4
# gemv_float splits a row over all GEMV_WARPS_PER_CTA warps of a CTA for matrices of at most this
# many rows: with a warp per row they would run too few warps to keep loads in flight (the
# gpt-oss router, 32 x 2880 F32: 9.7 us a layer at batch 1 on the H100, 20 us at 8 tokens).
GEMV_FLOAT_SPLIT_MAX_ROWS = 512
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y
DEQUANT_THREADS = 128  # dequantize.cu's DEQUANT_THREADS: chunks of 32 values per CTA
TILE_ELEMENTS = 32 << 20  # fp16 scratch for one dequantized weight tile: 64 MiB
ROUNDING_MODES = {"none": 0, "f16": 1, "bf16": 2, "q8_32": 3, "q8_256": 4}
# A small int8 GEMV on float activations rounds them in its own launch (gemv_int8_fused): each
# CTA rounds the whole input tile into shared memory. That saves the quantize_q8_32 launch (~1.6
# us of a batch-1 step with its launch gap on the H100) but repeats the rounding, and the input's
# reads from L2, in every CTA; so only where the repeat stays small:
# - at most FUSED_INPUT_MAX_VALUES values a tile (tokens x in_features): 9 KiB of shared codes and
#   scales, which does not limit how many CTAs an SM holds (and needs no opt-in past 48 KiB);
# - at most FUSED_INPUT_MAX_READ_BYTES of input floats read by all CTAs of a launch together
#   (estimated well under the saved launch at L2 bandwidth; not measured): a large weight (Llama-8B's
#   o projection reads 17 MB so) keeps the separate quantize launch, which reads each value once.
# - at most FUSED_INPUT_MAX_FLOATS_PER_CTA input floats a tile (tokens x in_features x floats a
#   value): the rounding phase runs before any dot in every CTA, so it must stay short. Measured on
#   the H100 (SmolLM2 batch 1, docs/benchmarks.md): the o projection's 576 floats, fused 3.20 us
#   against 2.53 + 1.18 us in two launches; the down projection's 2 x 1536 (SwiGLU), fused 7.78 us
#   against 2.53 + 1.57 us.
# Past any of them, linear takes the two-launch path: a size rule, both paths give the same bits.
FUSED_INPUT_MAX_VALUES = 8192
FUSED_INPUT_MAX_READ_BYTES = 4 << 20
FUSED_INPUT_MAX_FLOATS_PER_CTA = 1024
# gemv_int8_fused's INPUT (GEMV_INPUT_* in gemv_int8.cu): plain floats, or a GatedInput's
# [gate | up] rows (two floats read a value) whose activation the GEMV applies.
FUSED_INPUTS = {"float": 0, "swiglu": 1, "geglu": 2}



def round_activations(
    x: cupy.ndarray,  # [num_tokens, in_features] float32, contiguous
    rounding: str,
    out_dtype=np.float32,  # float32 or float16
) -> cupy.ndarray:  # [num_tokens, in_features] out_dtype
    num_tokens, num_cols = x.shape
    if rounding in ("q8_32", "q8_256") and num_cols % (32 if rounding == "q8_32" else 256):
        raise ValueError(f"{rounding} activation rounding needs in_features % block == 0, got {num_cols}")
    out = cupy.empty((num_tokens, num_cols), dtype=out_dtype)
    half = int(np.dtype(out_dtype) == np.float16)
    launch("activation_rounding.cu", f"round_activations<{ROUNDING_MODES[rounding]}, {half}>",
           (blocks_for(num_cols, 256), num_tokens), (256,), (x, np.int32(num_cols), out))
    return out


def quantize_q8_32(
    x: cupy.ndarray,  # [num_tokens, in_features] float32, contiguous, in_features % 32 == 0
) -> tuple[cupy.ndarray, cupy.ndarray]:  # codes [num_tokens, in_features] int8, scales [num_tokens, in_features/32] f32
    num_tokens, num_cols = x.shape
    num_blocks = num_tokens * num_cols // 32
    codes = cupy.empty((num_tokens, num_cols), dtype=np.int8)
    scales = cupy.empty((num_tokens, num_cols // 32), dtype=np.float32)
    launch("activation_rounding.cu", "quantize_q8_32", (blocks_for(num_blocks * 32, 256),), (256,),
           (x, np.int64(num_blocks), codes, scales))
    return codes, scales


def dequantize_rows(
    segment_raw: cupy.ndarray,  # [num_weight_rows, row_bytes] uint8 blocks of ggml_type
    ggml_type: int,
    num_cols: int,
    out_dtype,  # float32 or float16
    row_ids: cupy.ndarray | None = None,  # [num_out_rows] int32 rows to gather, or None
    first_row: int = 0,  # with row_ids None: rows first_row .. first_row + num_out_rows
    num_out_rows: int | None = None,
) -> cupy.ndarray:  # [num_out_rows, num_cols] out_dtype
    if num_cols % 32:  # the kernel writes whole 32-value chunks
        raise ValueError(f"CUDA dequantize needs a row width % 32 == 0, got {num_cols}")
    if row_ids is not None:
        row_ids = cupy.ascontiguousarray(row_ids, dtype=np.int32)
        num_out_rows = row_ids.shape[0]
    out = cupy.empty((num_out_rows, num_cols), dtype=out_dtype)
    if num_out_rows == 0:
        return out
    half = int(np.dtype(out_dtype) == np.float16)
    # blockIdx.y walks the output rows and gridDim.y is at most 65535: launch in row chunks
    # (a 256-wide model's fp16 tile of a 151936-row output matrix is 131072 rows).
    for begin in range(0, num_out_rows, MAX_GRID_Y):
        rows = min(MAX_GRID_Y, num_out_rows - begin)
        launch("dequantize.cu", f"dequantize_rows<{int(ggml_type)}, {half}>",
               (blocks_for(num_cols // 32, DEQUANT_THREADS), rows), (DEQUANT_THREADS,),
               (segment_raw, np.int64(segment_raw.shape[1]),
                row_ids[begin:begin + rows] if row_ids is not None else np.uint64(0),
                np.int64(first_row + begin), np.int32(rows), np.int32(num_cols), out[begin:begin + rows]))
    return out


def gemv_max_tokens(weight: QuantizedWeight) -> int:
    """The largest batch that `linear` runs as GEMV tiles for this weight."""
    if all(seg.ggml_type in KQUANT_DOT_TYPES for seg in weight.segments) and weight.rounding == "q8_256":
        return max(GEMV_MAX_TOKENS, KQUANT_GEMV_MAX_TOKENS)
    return GEMV_MAX_TOKENS


def takes_q8_codes(weight, num_tokens: int) -> bool:
    """Whether `linear(x, weight)` of `num_tokens` rows runs an int8 GEMV on x's q8_32 codes, so
    the op producing x may hand them over (`Q8Activations`) instead of floats."""
    return (isinstance(weight, QuantizedWeight) and 0 < num_tokens <= gemv_max_tokens(weight)
            and weight.rounding == "q8_32" and weight.in_features % 32 == 0
            and any(seg.ggml_type in INT8_DOT_TYPES for seg in weight.segments))


def fuses_input_rounding(weight, num_tokens: int, floats_per_value: int = 1) -> bool:
    """Whether `linear` of `num_tokens` rows of float input runs gemv_int8_fused, rounding the
    input to q8_32 codes inside the GEMV launch (the size rule above). `floats_per_value`: floats
    each CTA reads per input value (1: plain activations, 2: a GatedInput's gate and up)."""
    if not (isinstance(weight, QuantizedWeight) and 0 < num_tokens <= gemv_max_tokens(weight)
            and weight.rounding == "q8_32" and weight.in_features % 32 == 0
            and all(seg.ggml_type in INT8_DOT_TYPES for seg in weight.segments)):
        return False
    tile_values = min(num_tokens, GEMV_TILE_TOKENS) * weight.in_features
    num_ctas = sum(blocks_for(seg.num_rows, GEMV_WARPS_PER_CTA) for seg in weight.segments)
    return (tile_values <= FUSED_INPUT_MAX_VALUES
            and tile_values * floats_per_value <= FUSED_INPUT_MAX_FLOATS_PER_CTA
            and num_ctas * tile_values * 4 * floats_per_value <= FUSED_INPUT_MAX_READ_BYTES)


def codes_for_producer(
    weight,  # the weight `linear` will multiply the produced activations with, or None
    num_tokens: int,
    num_features: int,
) -> tuple[cupy.ndarray | None, cupy.ndarray | None]:
    """Empty q8_32 (codes [num_tokens, num_features] int8, scales [num_tokens, num_features / 32]
    float32) for the op producing `linear`'s input to fill in its own launch; (None, None) when
    that GEMV takes no codes."""
    if not takes_q8_codes(weight, num_tokens) or num_features % 32:  # False for weight None too
        return None, None
    return empty_codes(num_tokens, num_features)


def _gemv(x: cupy.ndarray, weight: QuantizedWeight, bias: cupy.ndarray | None, out: cupy.ndarray,
          quantized: tuple[cupy.ndarray, cupy.ndarray] | None = None) -> None:
    num_tokens, num_cols = x.shape
    kquantized = rounded = None
    for seg in weight.segments:
        out_view = out[:, seg.row_begin:]
        bias_view = bias[seg.row_begin:] if bias is not None else np.uint64(0)
        grid = (blocks_for(seg.num_rows, GEMV_WARPS_PER_CTA),)
        block = (32 * GEMV_WARPS_PER_CTA,)
        if seg.ggml_type in INT8_DOT_TYPES and weight.rounding == "q8_32":
            if quantized is None:
                quantized = quantize_q8_32(x)
            launch("gemv_int8.cu", f"gemv_int8<{int(seg.ggml_type)}, {num_tokens}>", grid, block,
                   (seg.raw, np.int64(seg.row_bytes), np.int32(seg.num_rows), np.int32(num_cols // 32),
                    quantized[0], quantized[1], bias_view, out_view, np.int64(out.shape[1])))
        elif seg.ggml_type in KQUANT_DOT_TYPES and weight.rounding == "q8_256":
            if kquantized is None:
                kquantized = quantize_q8_256(x)
            gemv_kquant(seg, kquantized, None if bias is None else bias_view, out_view, out.shape[1])
        else:
            if rounded is None:
                rounded = round_activations(x, weight.rounding)
            split = GEMV_WARPS_PER_CTA if seg.num_rows <= GEMV_FLOAT_SPLIT_MAX_ROWS else 1
            grid = (blocks_for(seg.num_rows, GEMV_WARPS_PER_CTA // split),)
            launch("gemv_float.cu", f"gemv_float<{int(seg.ggml_type)}, {num_tokens}, {split}>", grid, block,
                   (seg.raw, np.int64(seg.row_bytes), np.int32(seg.num_rows), np.int32(num_cols // 32),
                    rounded, bias_view, out_view, np.int64(out.shape[1])))


def _gemv_fused(
    x: cupy.ndarray,  # [num_tokens, in_features] float32, or [num_tokens, 2 * in_features] gate | up; contiguous
    weight: QuantizedWeight,  # every segment an INT8_DOT_TYPES one (fuses_input_rounding)
    bias: cupy.ndarray | None,  # [out_features] float32
    out: cupy.ndarray,  # [num_tokens, out_features] float32
    input_kind: str,  # a FUSED_INPUTS key
) -> None:
    num_tokens, num_blocks = x.shape[0], weight.in_features // 32
    shared_bytes = num_tokens * num_blocks * (4 + 32)  # a float scale and 32 int8 codes a block
    for seg in weight.segments:
        bias_view = bias[seg.row_begin:] if bias is not None else np.uint64(0)
        launch("gemv_int8.cu",
               f"gemv_int8_fused<{int(seg.ggml_type)}, {num_tokens}, {FUSED_INPUTS[input_kind]}>",
               (blocks_for(seg.num_rows, GEMV_WARPS_PER_CTA),), (32 * GEMV_WARPS_PER_CTA,),
               (seg.raw, np.int64(seg.row_bytes), np.int32(seg.num_rows), np.int32(num_blocks), x,
                bias_view, out[:, seg.row_begin:], np.int64(out.shape[1])), shared_mem=shared_bytes)


def _gemm_f16(
    x16: cupy.ndarray,  # [num_tokens, K] float16
    w16: cupy.ndarray,  # [rows, K] float16
    out_view: cupy.ndarray,  # [num_tokens, >= rows] float32 view into out, row stride ldc
    ldc: int,
) -> None:
    """out_view[:, :rows] = x16 @ w16.T in column-major terms: C[rows, T] = W^T(op T) . X."""
    num_tokens, k = x16.shape
    rows = w16.shape[0]
    blas.gemm_f16_f32(blas.CUBLAS_OP_T, blas.CUBLAS_OP_N, rows, num_tokens, k, w16.data.ptr, k,
                      x16.data.ptr, k, out_view.data.ptr, ldc)


def _dequant_gemm(x: cupy.ndarray, weight: QuantizedWeight, bias: cupy.ndarray | None, out: cupy.ndarray) -> None:
    num_cols = x.shape[1]
    x16 = round_activations(x, weight.rounding, np.float16)
    tile_rows = max(1, TILE_ELEMENTS // num_cols)
    for seg in weight.segments:
        for begin in range(0, seg.num_rows, tile_rows):
            rows = min(tile_rows, seg.num_rows - begin)
            w16 = dequantize_rows(seg.raw, seg.ggml_type, num_cols, np.float16,
                                  first_row=begin, num_out_rows=rows)
            _gemm_f16(x16, w16, out[:, seg.row_begin + begin:], out.shape[1])
    if bias is not None:
        out += bias


def _linear_gated(gated: GatedInput, weight: QuantizedWeight, bias: cupy.ndarray | None) -> cupy.ndarray:
    """act(gate) * up of `gated`, times the weight: only as gemv_int8_fused (one launch a tile)."""
    num_tokens, ffn = gated.shape
    if ffn != weight.in_features or not fuses_input_rounding(weight, num_tokens, floats_per_value=2):
        raise ValueError(f"linear: a GatedInput of {num_tokens} x {ffn} is only for a weight whose GEMV applies "
                         f"the activation itself (swiglu / geglu checked that for their quantize_for weight)")
    out = cupy.empty((num_tokens, weight.out_features), dtype=np.float32)
    if bias is not None:
        bias = cupy.ascontiguousarray(bias, dtype=np.float32)
    for begin in range(0, num_tokens, GEMV_TILE_TOKENS):
        end = begin + GEMV_TILE_TOKENS
        _gemv_fused(gated.gate_up[begin:end], weight, bias, out[begin:end], gated.activation)
    return out


def linear(
    x: cupy.ndarray | Q8Activations | GatedInput,  # [num_tokens, in_features] float32 (see below)
    weight: QuantizedWeight,
    bias: cupy.ndarray | None = None,  # [out_features] float32
    generated_rows=None,  # [num_tokens] host bool; the GPU path is chosen by batch size for now
) -> cupy.ndarray:  # [num_tokens, out_features] float32
    """x @ W.T + bias. `x` is float32, or a producer's `Q8Activations` (its codes feed the int8 GEMV),
    or a `GatedInput` from swiglu / geglu (the GEMV applies the activation itself)."""
    if isinstance(x, GatedInput):
        return _linear_gated(x, weight, bias)
    q8 = x if isinstance(x, Q8Activations) else None
    x = cupy.ascontiguousarray(x.values if q8 is not None else x, dtype=np.float32)
    num_tokens, num_cols = x.shape
    if num_cols != weight.in_features:
        raise ValueError(f"linear: input has {num_cols} features, weight expects {weight.in_features}")
    if num_cols % 32:
        raise ValueError(f"CUDA linear needs in_features % 32 == 0, got {num_cols}")
    out = cupy.empty((num_tokens, weight.out_features), dtype=np.float32)
    if num_tokens == 0:
        return out
    if bias is not None:
        bias = cupy.ascontiguousarray(bias, dtype=np.float32)
    if num_tokens <= gemv_max_tokens(weight):
        # Tiles of GEMV_TILE_TOKENS: with GEMV_MAX_TOKENS raised, every row goes through the same
        # kernel whatever the batch (batch invariance, at GEMV speed). Float input of an int8 GEMV
        # is rounded in the GEMV's own launch where that is cheap, else by quantize_q8_32 first
        # (fuses_input_rounding; the same bits either way).
        fused = q8 is None and fuses_input_rounding(weight, num_tokens)
        for begin in range(0, num_tokens, GEMV_TILE_TOKENS):
            end = begin + GEMV_TILE_TOKENS
            if fused:
                _gemv_fused(x[begin:end], weight, bias, out[begin:end], "float")
                continue
            quantized = None if q8 is None else (q8.codes[begin:end], q8.scales[begin:end])
            _gemv(x[begin:end], weight, bias, out[begin:end], quantized)
    else:
        _dequant_gemm(x, weight, bias, out)
    return out


def embedding(
    weight: QuantizedWeight,  # rows are tokens: [vocab_size, hidden]
    token_ids: cupy.ndarray,  # [num_tokens] int
) -> cupy.ndarray:  # [num_tokens, hidden] float32
    if len(weight.segments) != 1:
        raise ValueError("embedding needs a single-segment weight")
    seg = weight.segments[0]
    return dequantize_rows(seg.raw, seg.ggml_type, weight.in_features, np.float32, row_ids=token_ids)
