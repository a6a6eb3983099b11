"""Mixture-of-experts feed-forward on the GPU (gpt-oss): the twin of kernels/reference/moe.py.

Experts stay in their GGUF block format on the device (MXFP4 for gpt-oss; any type of
weights.GPU_TYPES works). Everything after the inputs is on the device and every launch shape
and buffer size depends only on (num_tokens, k, num_experts), never on device values, so
`moe_ffn` never synchronizes with the host and can be captured in a CUDA graph:

1. routing (moe_route.cu): top-k experts per token and the softmax over their k logits;
2. experts whose blocks have an int8 dot (MXFP4, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), while the
   average expert group is below a tuned limit (`uses_int8_tiles`): the activations become q8_32
   codes and moe_int8.cu runs a warp per expert output row over a tile of pairs, an exact dp4a
   dot per block: one pair a tile, read from `selected` itself, up to GEMV_MAX_TOKENS tokens
   (decode: no sort); past that, tiles of INT8_TILE_ROWS pairs of one expert from the counting
   sort below, so each weight row is read once per tile. Gate and up share one launch with the
   clamped SwiGLU applied to its outputs, whose codes then feed the down launch;
3. other types at up to GEMV_MAX_TOKENS tokens: a float dequantize-GEMV per (token, slot) pair
   (moe_gemv.cu), gate and up in one kernel, then down;
4. larger batches: the pairs are counting-sorted by expert on the device into a buffer of
   max_row_tiles(num_pairs, E, tile_rows) * tile_rows rows whose groups are padded to tile_rows
   (16 or 64, chosen from the average group size), and a grouped GEMM walks the row tiles, each
   owned by one expert: on tensor cores for MXFP4 (moe_grouped_mma.cu: int8 mma over the q8
   codes and the doubled E2M1 integers, exact, scaled per 32-block; a row's result does not
   depend on the tile size), in float32 SIMT for the other types (moe_grouped.cu);
5. the weighted sum over the k slots in rank order (moe_combine).

Numerics: activations are rounded as the reference rounds them (`linear.round_activations`,
q8_32 for MXFP4/Q8_0), weights are dequantized to float32 as gguf does (or kept as exact integer
codes on the tensor-core path), and all sums are float32, so every path differs from the
reference only by summation order (and expf's last bit).
`generated_rows` is accepted for API parity: each output row is computed by a kernel whose
result does not depend on the other rows of its path (see docs/cuda.md).

Expert parallelism (`expert_range=(begin, end)`, runtime/parallel): the expert tensors and biases
hold global experts begin..end-1 only. Routing still ranks all the router logits, then writes
local ids (global - begin) and -1 for a slot routed to another rank: the GEMV CTAs of such a
pair exit after one load, the counting sort leaves it out (so no grouped-GEMM tile carries it),
and moe_combine adds 0 * weight for it, the reference's exact zero. Launch shapes stay those of
the whole op (the number of pairs a rank receives is a device value), so the grouped buffers
keep room for every pair and the unused tiles exit at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import cupy
import numpy as np
from gguf import GGMLQuantizationType as T

from ..reference.linear import activation_rounding
from ..reference.moe import check_shapes, local_expert_range
from .linear import quantize_q8_32, round_activations
from .module_cache import blocks_for, launch
from .weights import GPU_TYPES, INT8_DOT_TYPES, host_bytes, row_bytes_of, upload_rows

GEMV_MAX_TOKENS = 8  # larger batches take the grouped GEMM (or grouped int8 tiles)
# Pairs per grouped int8 tile (moe_int8.cu's ROWS): each tile reads its expert's rows once, so
# fewer, fuller tiles read less; 8 keeps its accumulators in registers (115 at sm_90, no spills).
INT8_TILE_ROWS = 8
# moe_int8.cu takes the layer while the average expert group (pairs / all experts) is below this;
# past it the grouped GEMM. Measured on the H100 for MXFP4 against the earlier fp16 mma grouped
# GEMM (gpt-oss-20b layer, benchmarks/cuda_moe_layer.py, docs/benchmarks.md): sorted int8 tiles
# 1.20-1.31 ms vs grouped 1.48 ms at 16 tokens (group 2), 3.1 vs 1.31 ms at 64 (group 8). Past
# GEMV_MAX_TOKENS it now governs only the types whose grouped GEMM is the float32 SIMT kernel,
# where it has not been measured.
INT8_MAX_AVERAGE_GROUP = 2.5
# The same limit for the sorted tiles (past GEMV_MAX_TOKENS) of MXFP4 experts, whose grouped GEMM
# is the int8 mma kernel: on the H100 it beats the sorted tiles from 9 tokens on (0.43 against
# 0.65 ms a layer at 9 tokens, 0.48 against 0.83 at 16), so they never take MXFP4 by default.
INT8_MAX_AVERAGE_GROUP_MMA = 0.0
INT8_WARPS_PER_CTA = 4
# Expert types moe_int8.cu takes (dot_q8.cuh): linear's int8-dot types, plus MXFP4, whose
# activations the reference also rounds to q8_32 codes.
INT8_TYPES = INT8_DOT_TYPES | {T.MXFP4}
GEMV_WARPS_PER_CTA = 4
ROUTE_WARPS_PER_CTA = 4
TILE_N = 64  # output columns per grouped-GEMM CTA (moe_grouped.cu)
# Row tiles of the grouped GEMM: 16 * ROWS for its ROWS template argument. Large tiles reuse each
# dequantized weight block for more rows; small ones waste less on padding when groups are small.
SMALL_TILE_ROWS, LARGE_TILE_ROWS = 16, 64
GROUPED_THREADS = 256  # both grouped kernels
# MXFP4 experts in the grouped path use tensor cores (exact integer products, see
# moe_grouped_mma.cu); False sends them through the float32 SIMT kernel like the other types.
GROUPED_TENSOR_CORES = True
# Blocks of K a warp of moe_grouped_mma.cu loads ahead of its mma, by ROWS (row tile / 16): 16-row
# tiles do little work per block, so they keep more blocks in flight to cover a memory latency;
# 64-row tiles hold four times the activation fragments a block (nvcc sm_90: 128 / 250 registers,
# no spills; 6 or 8 blocks spill at 16 rows).
MMA_GROUP_BLOCKS = {1: 4, 4: 2}
_NULL = np.uint64(0)


@dataclass(frozen=True)
class ExpertWeights:
    """`[num_experts, out_features, in_features]` as GGUF blocks on the device:
    raw is `[num_experts, out_features, row_bytes]` uint8."""

    raw: cupy.ndarray
    ggml_type: T
    num_experts: int
    out_features: int
    in_features: int

    def __post_init__(self) -> None:
        if self.ggml_type not in GPU_TYPES:
            raise ValueError(f"expert tensor type {T(self.ggml_type).name} has no CUDA kernel")
        if self.in_features % 32:
            raise ValueError(f"CUDA MoE needs in_features % 32 == 0, got {self.in_features}")
        expected = (self.num_experts, self.out_features, row_bytes_of(self.ggml_type, self.in_features))
        if self.raw.dtype != np.uint8 or self.raw.shape != expected:
            raise ValueError(f"expert bytes must be uint8 {list(expected)}, got {self.raw.dtype} {list(self.raw.shape)}")

    @property
    def rounding(self) -> str:
        return activation_rounding(self.ggml_type)

    @property
    def row_bytes(self) -> int:
        return self.raw.shape[2]

    @property
    def expert_bytes(self) -> int:
        return self.raw.shape[1] * self.raw.shape[2]

    @property
    def num_bytes(self) -> int:
        return self.raw.nbytes


def load_experts(
    raw: np.ndarray,  # the tensor's bytes (any shape, uint8 or a typed F32/F16 array)
    ggml_type: int,
    num_experts: int,
    out_features: int,
    in_features: int,
) -> ExpertWeights:
    ggml_type = T(ggml_type)
    if ggml_type not in GPU_TYPES:
        raise ValueError(f"expert tensor type {ggml_type.name} has no CUDA kernel")
    width = row_bytes_of(ggml_type, in_features)
    host = host_bytes(raw, num_experts * out_features, width)
    device = upload_rows([host]).reshape(num_experts, out_features, width)
    return ExpertWeights(device, ggml_type, num_experts, out_features, in_features)


def route(
    router_logits: cupy.ndarray,  # [num_tokens, num_experts] float32, contiguous
    num_experts_used: int,
    expert_range: tuple[int, int] | None = None,  # [begin, end) of global ids held; None: all
) -> tuple[cupy.ndarray, cupy.ndarray]:  # expert ids [num_tokens, k] int32, weights [num_tokens, k] float32
    """Top-k over all experts and their softmax weights (the reference's `route`). The ids are
    local to `expert_range` (global - begin), -1 where the slot's expert lies outside it."""
    num_tokens, num_experts = router_logits.shape
    begin, end = (0, num_experts) if expert_range is None else (int(v) for v in expert_range)
    if not 0 <= begin < end <= num_experts:
        raise ValueError(f"expert_range [{begin}, {end}) must be a non-empty part of 0..{num_experts}")
    selected = cupy.empty((num_tokens, num_experts_used), dtype=np.int32)
    weights = cupy.empty((num_tokens, num_experts_used), dtype=np.float32)
    if num_tokens:
        launch("moe_route.cu", "moe_route", (blocks_for(num_tokens, ROUTE_WARPS_PER_CTA),),
               (32 * ROUTE_WARPS_PER_CTA,), (router_logits, np.int32(num_tokens), np.int32(num_experts),
                                             np.int32(num_experts_used), np.int32(begin),
                                             np.int32(end - begin), selected, weights))
    return selected, weights


def tile_rows_for(num_pairs: int, num_experts: int) -> int:
    """The grouped GEMM's row tile: large once the average expert group fills one."""
    return LARGE_TILE_ROWS if num_pairs >= LARGE_TILE_ROWS * num_experts else SMALL_TILE_ROWS


def max_row_tiles(num_pairs: int, num_experts: int, tile_rows: int) -> int:
    """Row tiles the padded groups can need: each expert's partial last tile adds at most one."""
    return num_pairs // tile_rows + min(num_experts, num_pairs)


def group_pairs(
    selected: cupy.ndarray,  # [num_tokens, k] int32 local expert ids, -1: another rank's expert
    num_experts: int,  # experts the rank holds
    tile_rows: int,
) -> tuple[cupy.ndarray, cupy.ndarray]:  # tile_expert [max_tiles] int32, sorted_pairs [max_tiles * tile_rows] int32
    """Counting sort of the (token, slot) pairs by expert, on the device, into fixed-size buffers;
    pairs marked -1 are left out. The buffers are sized for every pair being the rank's."""
    num_pairs = selected.size
    max_tiles = max_row_tiles(num_pairs, num_experts, tile_rows)
    counters = cupy.zeros(2 * num_experts, dtype=np.int32)  # counts, then scatter cursors
    group_begin = cupy.empty(num_experts + 1, dtype=np.int32)
    tile_expert = cupy.empty(max_tiles, dtype=np.int32)
    sorted_pairs = cupy.full(max_tiles * tile_rows, -1, dtype=np.int32)
    grid = (blocks_for(num_pairs, 256),)
    launch("moe_route.cu", "moe_count_pairs", grid, (256,), (selected, np.int32(num_pairs), counters))
    launch("moe_route.cu", "moe_group_offsets", (1,), (256,),
           (counters, np.int32(num_experts), np.int32(tile_rows), np.int32(max_tiles), group_begin, tile_expert))
    launch("moe_route.cu", "moe_scatter_pairs", grid, (256,),
           (selected, np.int32(num_pairs), group_begin, counters[num_experts:], sorted_pairs))
    return tile_expert, sorted_pairs


def _bias(bias) -> cupy.ndarray | np.uint64:
    return _NULL if bias is None else cupy.ascontiguousarray(cupy.asarray(bias), dtype=np.float32)


def _gemv_path(x, selected, k, gate_exps, up_exps, down_exps, biases, alpha, limit):
    num_pairs = selected.size
    ffn, hidden = gate_exps.out_features, down_exps.out_features
    block = (32 * GEMV_WARPS_PER_CTA,)
    x_rounded = round_activations(x, gate_exps.rounding)
    h = cupy.empty((num_pairs, ffn), dtype=np.float32)
    launch("moe_gemv.cu", f"moe_gate_up_gemv<{int(gate_exps.ggml_type)}>",
           (blocks_for(ffn, GEMV_WARPS_PER_CTA), num_pairs), block,
           (gate_exps.raw, up_exps.raw, np.int64(gate_exps.expert_bytes), np.int64(gate_exps.row_bytes),
            np.int32(ffn), np.int32(gate_exps.in_features // 32), selected, np.int32(k), x_rounded,
            biases[0], biases[1], alpha, limit, h))
    h_rounded = round_activations(h, down_exps.rounding)
    y = cupy.empty((num_pairs, hidden), dtype=np.float32)
    launch("moe_gemv.cu", f"moe_down_gemv<{int(down_exps.ggml_type)}>",
           (blocks_for(hidden, GEMV_WARPS_PER_CTA), num_pairs), block,
           (down_exps.raw, np.int64(down_exps.expert_bytes), np.int64(down_exps.row_bytes), np.int32(hidden),
            np.int32(ffn // 32), selected, h_rounded, biases[2], y))
    return y


def uses_int8_tiles(ggml_type: int, num_pairs: int, num_experts: int, num_tokens: int) -> bool:
    """moe_int8.cu takes the layer: an int8-dot type, and groups (pairs / all experts) below
    INT8_MAX_AVERAGE_GROUP on average, where re-reading a weight row per tile costs less than the
    grouped GEMM's padding and weight stream; INT8_MAX_AVERAGE_GROUP_MMA instead for sorted tiles
    (past GEMV_MAX_TOKENS) of experts that the tensor-core grouped GEMM takes."""
    if ggml_type not in INT8_TYPES:
        return False
    is_sorted = num_tokens > GEMV_MAX_TOKENS
    limit = INT8_MAX_AVERAGE_GROUP_MMA if is_sorted and uses_tensor_cores(ggml_type) else INT8_MAX_AVERAGE_GROUP
    return num_pairs < limit * num_experts


def _int8_matmul(
    act: cupy.ndarray,  # [num_act_rows, in_features] float32, not yet rounded
    act_div: int,  # activation row of a pair: pair // act_div
    weights: ExpertWeights,
    up_weights: ExpertWeights | None,  # given: out = swiglu_oai(act.w + b0, act.up + b1)
    tiles: tuple,  # (tile_expert [num_tiles] int32, pairs [num_tiles * rows] int32 or _NULL, rows)
    bias0, bias1, alpha, limit,
    out: cupy.ndarray,  # [num_pairs, out_features] float32
) -> None:
    tile_expert, pairs, rows = tiles
    codes, scales = quantize_q8_32(act)
    gate_up = int(up_weights is not None)
    launch("moe_int8.cu", f"moe_int8<{int(weights.ggml_type)}, {rows}, {gate_up}>",
           (blocks_for(weights.out_features, INT8_WARPS_PER_CTA), tile_expert.shape[0]),
           (32 * INT8_WARPS_PER_CTA,),
           (weights.raw, up_weights.raw if gate_up else _NULL, np.int64(weights.expert_bytes),
            np.int64(weights.row_bytes), np.int32(weights.out_features), np.int32(weights.in_features // 32),
            tile_expert, pairs, codes, scales, np.int32(act_div), bias0, bias1, alpha, limit, out))


def _int8_path(x, selected, k, gate_exps, up_exps, down_exps, biases, alpha, limit):
    num_pairs = selected.size
    if x.shape[0] <= GEMV_MAX_TOKENS:  # a tile per pair, straight from the routing
        tiles = (selected.reshape(-1), _NULL, 1)
    else:
        tile_expert, sorted_pairs = group_pairs(selected, gate_exps.num_experts, INT8_TILE_ROWS)
        tiles = (tile_expert, sorted_pairs, INT8_TILE_ROWS)
    h = cupy.empty((num_pairs, gate_exps.out_features), dtype=np.float32)
    _int8_matmul(x, k, gate_exps, up_exps, tiles, biases[0], biases[1], alpha, limit, h)
    y = cupy.empty((num_pairs, down_exps.out_features), dtype=np.float32)
    _int8_matmul(h, 1, down_exps, None, tiles, biases[2], _NULL, alpha, limit, y)
    return y


def uses_tensor_cores(ggml_type: int) -> bool:
    """MXFP4 experts take the exact int8-mma grouped GEMM (moe_grouped_mma.cu)."""
    return GROUPED_TENSOR_CORES and ggml_type == T.MXFP4


def _grouped_matmul(
    act: cupy.ndarray,  # [num_act_rows, in_features] float32, not yet rounded
    act_div: int,  # activation row of a pair: pair // act_div
    weights: ExpertWeights,
    up_weights: ExpertWeights | None,  # given: out = swiglu_oai(act.w + b0, act.up + b1)
    grouping: tuple,  # (tile_expert, sorted_pairs, tile_rows) from group_pairs
    bias0, bias1, alpha, limit,
    out: cupy.ndarray,  # [num_pairs, out_features] float32
) -> None:
    tile_expert, sorted_pairs, tile_rows = grouping
    num_out = weights.out_features
    gate_up = int(up_weights is not None)
    grid = (tile_expert.shape[0], blocks_for(num_out, TILE_N))
    head = (weights.raw, up_weights.raw if gate_up else _NULL, np.int64(weights.expert_bytes),
            np.int64(weights.row_bytes), np.int32(num_out), np.int32(weights.in_features // 32),
            tile_expert, sorted_pairs)
    tail = (np.int32(act_div), bias0, bias1, alpha, limit, out)
    if uses_tensor_cores(weights.ggml_type):
        codes, scales = quantize_q8_32(act)
        rows = tile_rows // 16
        launch("moe_grouped_mma.cu", f"moe_grouped_mxfp4_mma<{gate_up}, {rows}, {MMA_GROUP_BLOCKS[rows]}>", grid,
               (GROUPED_THREADS,), head + (codes, scales) + tail)
    else:
        rounded = round_activations(act, weights.rounding)
        launch("moe_grouped.cu", f"moe_grouped<{int(weights.ggml_type)}, {gate_up}, {tile_rows // 16}>",
               grid, (GROUPED_THREADS,), head + (rounded,) + tail)


def _grouped_path(x, selected, k, tile_rows, gate_exps, up_exps, down_exps, biases, alpha, limit):
    num_pairs = selected.size
    ffn, hidden = gate_exps.out_features, down_exps.out_features
    grouping = (*group_pairs(selected, gate_exps.num_experts, tile_rows), tile_rows)
    h = cupy.empty((num_pairs, ffn), dtype=np.float32)
    _grouped_matmul(x, k, gate_exps, up_exps, grouping, biases[0], biases[1], alpha, limit, h)
    y = cupy.empty((num_pairs, hidden), dtype=np.float32)
    _grouped_matmul(h, 1, down_exps, None, grouping, biases[2], _NULL, alpha, limit, y)
    return y


def moe_ffn(
    x: cupy.ndarray,  # [num_tokens, hidden] float32
    router_logits: cupy.ndarray,  # [num_tokens, E] float32 over all experts, router bias added
    gate_exps: ExpertWeights,  # [L, ffn, hidden], L = E, or end - begin with expert_range
    gate_bias: cupy.ndarray | None,  # [L, ffn] float32
    up_exps: ExpertWeights,  # [L, ffn, hidden]
    up_bias: cupy.ndarray | None,  # [L, ffn] float32
    down_exps: ExpertWeights,  # [L, hidden, ffn]
    down_bias: cupy.ndarray | None,  # [L, hidden] float32
    num_experts_used: int,
    swiglu_alpha: float = 1.702,
    swiglu_limit: float = 7.0,
    generated_rows=None,  # [num_tokens] host bool; the path is chosen by batch size (see above)
    expert_range: tuple[int, int] | None = None,  # global experts the tensors hold; None: all
) -> cupy.ndarray:  # [num_tokens, hidden] float32 (with expert_range: this range's partial sum)
    x = cupy.ascontiguousarray(x, dtype=np.float32)
    router_logits = cupy.ascontiguousarray(router_logits, dtype=np.float32)
    biases = [_bias(b) for b in (gate_bias, up_bias, down_bias)]
    check_shapes(x, router_logits, gate_exps, up_exps, down_exps,
                 [None if isinstance(b, np.uint64) else b for b in biases], num_experts_used,
                 expert_range)
    num_routed = router_logits.shape[1]
    held = local_expert_range(num_routed, gate_exps.num_experts, expert_range)
    if gate_exps.ggml_type != up_exps.ggml_type:
        raise ValueError(f"gate and up experts must share a type (one fused kernel), got "
                         f"{gate_exps.ggml_type.name} and {up_exps.ggml_type.name}")
    if down_exps.in_features % 32:
        raise ValueError(f"CUDA MoE needs ffn % 32 == 0, got {down_exps.in_features}")
    num_tokens, hidden = x.shape
    out = cupy.empty((num_tokens, hidden), dtype=np.float32)
    if num_tokens == 0:
        return out
    k = num_experts_used
    selected, weights = route(router_logits, k, held)  # [num_tokens, k] local ids or -1, weights
    tail = (gate_exps, up_exps, down_exps, biases, np.float32(swiglu_alpha), np.float32(swiglu_limit))
    if (uses_int8_tiles(gate_exps.ggml_type, selected.size, num_routed, num_tokens)
            and down_exps.ggml_type in INT8_TYPES):
        y = _int8_path(x, selected, k, *tail)  # [num_tokens * k, hidden]
    elif num_tokens <= GEMV_MAX_TOKENS:
        y = _gemv_path(x, selected, k, *tail)
    else:
        # The average group is pairs / (all experts) on every rank: each rank tiles as TP=1 does.
        y = _grouped_path(x, selected, k, tile_rows_for(selected.size, num_routed), *tail)
    launch("moe_route.cu", "moe_combine", (blocks_for(num_tokens * hidden, 256),), (256,),
           (y, selected, weights, np.int32(num_tokens), np.int32(k), np.int32(hidden), out))
    return out
