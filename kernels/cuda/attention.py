"""KV-cache write and paged attention launchers (layout: kernels/reference/attention.py)."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import cupy
import numpy as np

from ..batch import AttentionBatch
from .arrays import as_rows, optional
from .module_cache import blocks_for, launch

KEY_TILE = 128  # = blockDim.x of paged_attention.cu
MAX_HEAD_DIM = 256
# Decode batches (paged_attention_decode.cu): a CTA per (row, KV head, up to 8 heads of its
# group); the context is split over more CTAs until about DECODE_TARGET_CTAS run (H100: 132 SMs).
MAX_HEADS_PER_CTA = 8
DECODE_TARGET_CTAS = 256
MAX_DECODE_SPLITS = 32  # = MAX_SPLITS of paged_attention_decode.cu
# A split takes at least this many 32-key tiles per warp: a warp's latency grows by tiles, so a
# split that leaves each warp one tile or less buys no time and costs the partial state and the
# merge (shorter contexts leave the trailing splits empty; those CTAs exit at once).
MIN_WARP_TILES_PER_SPLIT = 1
# Registers and shared memory (the warps' accumulators) grow with heads x feature pairs.
MAX_WARP_ACCUMULATORS = 64  # warps x heads per CTA x feature pairs per lane (more spills at 8 warps)


@dataclass(frozen=True)
class DecodeLayout:
    """How the decode kernel covers one (row, KV head): template arguments and CTA columns."""

    heads_per_cta: int  # HEADS: a power of two, >= the group or MAX_HEADS_PER_CTA
    pairs_per_lane: int  # PAIRS: head_dim <= 64 * PAIRS
    num_warps: int  # NUM_WARPS: warps sharing the keys of one CTA
    ctas_per_row: int  # gridDim.y: num_kv_heads x CTAs per GQA group

    @staticmethod
    def of(num_heads: int, num_kv_heads: int, head_dim: int) -> "DecodeLayout":
        group = num_heads // num_kv_heads
        heads = _next_power_of_two(min(group, MAX_HEADS_PER_CTA))
        pairs = _next_power_of_two(-(-head_dim // 64))
        warps = min(8, MAX_WARP_ACCUMULATORS // (heads * pairs))
        return DecodeLayout(heads, pairs, warps, num_kv_heads * -(-group // heads))

    @property
    def kernel(self) -> str:
        return f"attention_decode<{self.heads_per_cta}, {self.pairs_per_lane}, {self.num_warps}>"


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def decode_splits(num_rows: int, ctas_per_row: int) -> int:
    """Context splits (gridDim.z) of a decode batch. It depends on the row count rounded up to a
    power of two, never on context lengths (a CUDA graph replays one launch for any context), so
    a batch of n rows and the CUDA-graph bucket it runs in (runtime/decode_graphs.py: every bucket
    lies between the same powers of two as the batches it takes) split alike and give
    bit-identical rows."""
    rows = _next_power_of_two(num_rows)
    return max(1, min(MAX_DECODE_SPLITS, DECODE_TARGET_CTAS // (rows * ctas_per_row)))


def write_kv(
    k_cache: cupy.ndarray,  # [num_blocks, block_size, num_kv_heads, head_dim] float16
    v_cache: cupy.ndarray,  # [num_blocks, block_size, num_kv_heads, head_dim] float16
    k: cupy.ndarray,  # [num_tokens, num_kv_heads, head_dim] float32 (may be row-strided)
    v: cupy.ndarray,  # [num_tokens, num_kv_heads, head_dim] float32 (may be row-strided)
    slot_mapping: cupy.ndarray,  # [num_tokens] int64
) -> None:
    num_tokens = k.shape[0]
    kv_width = k_cache.shape[2] * k_cache.shape[3]
    if not (k_cache.flags.c_contiguous and v_cache.flags.c_contiguous):
        raise ValueError("write_kv needs contiguous caches")
    k, k_stride = as_rows(k, kv_width)
    v, v_stride = as_rows(v, kv_width)
    slots = cupy.ascontiguousarray(slot_mapping, dtype=np.int64)
    if num_tokens:
        launch("kv_write.cu", "write_kv", (blocks_for(num_tokens * kv_width, 256),), (256,),
               (k, np.int64(k_stride), v, np.int64(v_stride), slots, np.int32(num_tokens),
                np.int32(kv_width), k_cache, v_cache))


def paged_attention(
    q: cupy.ndarray,  # [num_tokens, num_heads, head_dim] float32
    k_cache: cupy.ndarray,  # [num_blocks, block_size, num_kv_heads, head_dim] float16
    v_cache: cupy.ndarray,  # [num_blocks, block_size, num_kv_heads, head_dim] float16
    batch: AttentionBatch,
    scale: float,
    sliding_window: int = 0,  # 0 = full attention; else a key is visible if pos_q - pos_k < window
    sinks: cupy.ndarray | None = None,  # [num_heads] float32
    softcap: float = 0.0,
) -> cupy.ndarray:  # [num_tokens, num_heads, head_dim] float32
    q = cupy.ascontiguousarray(q, dtype=np.float32)
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, cache_head_dim = k_cache.shape
    if cache_head_dim != head_dim or head_dim > MAX_HEAD_DIM or head_dim % 2:
        raise ValueError(f"paged_attention: head_dim {head_dim} (cache {cache_head_dim}) unsupported")
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads do not group over {num_kv_heads} KV heads")
    out = cupy.empty_like(q)
    if num_tokens == 0:
        return out
    block_tables = cupy.ascontiguousarray(batch.block_tables, dtype=np.int32)
    if batch.max_query_len == 1 and num_tokens == batch.num_seqs:
        _decode_attention(q, k_cache, v_cache, batch, block_tables, scale, sliding_window, sinks, softcap, out)
        return out
    launch("paged_attention.cu", "paged_attention", (num_tokens, num_heads), (KEY_TILE,),
           (q, k_cache, v_cache, cupy.ascontiguousarray(batch.query_start, dtype=np.int32),
            cupy.ascontiguousarray(batch.context_lens, dtype=np.int32), block_tables,
            np.int32(block_tables.shape[1]), np.int32(batch.num_seqs), np.int32(num_heads),
            np.int32(num_kv_heads), np.int32(head_dim), np.int32(block_size), np.float32(scale),
            np.int32(sliding_window or 0), optional(sinks), np.float32(softcap or 0.0), out))
    return out


def _decode_attention(q, k_cache, v_cache, batch: AttentionBatch, block_tables, scale: float,
                      sliding_window: int, sinks, softcap: float, out) -> None:
    """Every row is its sequence's one new token: one launch of paged_attention_decode.cu."""
    num_rows, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    layout = DecodeLayout.of(num_heads, num_kv_heads, head_dim)
    num_splits = decode_splits(num_rows, layout.ctas_per_row)
    if num_splits > 1:
        part_acc = cupy.empty((num_rows, num_heads, num_splits, head_dim), dtype=np.float32)
        part_max = cupy.empty((num_rows, num_heads, num_splits), dtype=np.float32)
        part_sum = cupy.empty((num_rows, num_heads, num_splits), dtype=np.float32)
        counters = _split_counters(num_rows * layout.ctas_per_row)
    else:  # one split writes `out` directly and never touches these
        part_acc = part_max = part_sum = counters = np.uintp(0)
    min_keys_per_split = 32 * layout.num_warps * MIN_WARP_TILES_PER_SPLIT
    launch("paged_attention_decode.cu", layout.kernel, (num_rows, layout.ctas_per_row, num_splits),
           (32 * layout.num_warps,),
           (q, k_cache, v_cache, cupy.ascontiguousarray(batch.context_lens, dtype=np.int32), block_tables,
            np.int32(block_tables.shape[1]), np.int32(num_heads), np.int32(num_kv_heads), np.int32(head_dim),
            np.int32(block_size), np.float32(scale), np.int32(sliding_window or 0), np.float32(softcap or 0.0),
            optional(sinks), np.int32(min_keys_per_split), part_acc, part_max, part_sum, counters, out))


_counters_lock = threading.Lock()
_counters: dict[tuple[int, int], cupy.ndarray] = {}
_outgrown_counters: list[cupy.ndarray] = []  # captured graphs may still point at them


def _split_counters(num_counters: int) -> cupy.ndarray:  # [>= num_counters] int32, all zero
    """The split tickets of the current device and stream. The kernel leaves them at zero, so
    they are zeroed once, when created; one set per stream, because two launches sharing
    counters must never overlap. Their memory is a plain device allocation, not from a pool: a
    graph's private pool (kernels/cuda/graphs.py) may be freed while the counters live on.
    GraphPool's warm-up run creates its stream's set before the capture, which cannot create it.
    Splits > 1 imply rows x CTAs per row <= DECODE_TARGET_CTAS, so the first size fits unless
    that constant is raised (benchmarks do); outgrown sets are kept, never freed."""
    stream = cupy.cuda.get_current_stream()
    key = (cupy.cuda.Device().id, stream.ptr)
    with _counters_lock:
        counters = _counters.get(key)
        if counters is None or counters.size < num_counters:
            if stream.is_capturing():
                raise RuntimeError("decode attention: run the function once on this stream before "
                                   "capturing it (the split counters must exist and be zero)")
            if counters is not None:
                _outgrown_counters.append(counters)
            size = max(num_counters, DECODE_TARGET_CTAS)
            memory = cupy.cuda.MemoryPointer(cupy.cuda.memory.Memory(size * 4), 0)
            counters = cupy.ndarray((size,), dtype=np.int32, memptr=memory)
            cupy.cuda.runtime.memsetAsync(memory.ptr, 0, size * 4, stream.ptr)
            _counters[key] = counters
    return counters
