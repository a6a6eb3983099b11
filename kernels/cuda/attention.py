"""KV-cache write and paged attention launchers (layout: kernels/reference/attention.py)."""
from __future__ import annotations

import cupy
import numpy as np

from ..batch import AttentionBatch
from .arrays import as_rows, optional
from .module_cache import blocks_for, launch

KEY_TILE = 128  # = blockDim.x of paged_attention.cu and paged_attention_decode.cu
MAX_HEAD_DIM = 256
# Decode batches split each (row, head)'s keys over CTAs until about this many CTAs run.
DECODE_TARGET_CTAS = 512
MAX_DECODE_SPLITS = 32


def decode_splits(num_rows: int, num_heads: int) -> int:
    """Context splits per (row, head) of a decode batch. It depends on the row count rounded up
    to a power of two, so a batch of n rows and the CUDA-graph bucket it runs in (runtime/
    decode_graphs.py: every bucket lies between the same powers of two as the batches it takes)
    split alike and give bit-identical rows."""
    rows = 1 << max(0, num_rows - 1).bit_length()
    return max(1, min(MAX_DECODE_SPLITS, -(-DECODE_TARGET_CTAS // (rows * num_heads))))


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
    """Every row is its sequence's one new token: the context-split kernels."""
    num_rows, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    num_splits = decode_splits(num_rows, num_heads)
    part_acc = cupy.empty((num_rows, num_heads, num_splits, head_dim), dtype=np.float32)
    part_max = cupy.empty((num_rows, num_heads, num_splits), dtype=np.float32)
    part_sum = cupy.empty((num_rows, num_heads, num_splits), dtype=np.float32)
    launch("paged_attention_decode.cu", "attention_decode_split", (num_rows, num_heads, num_splits), (KEY_TILE,),
           (q, k_cache, v_cache, cupy.ascontiguousarray(batch.context_lens, dtype=np.int32), block_tables,
            np.int32(block_tables.shape[1]), np.int32(num_heads), np.int32(num_kv_heads), np.int32(head_dim),
            np.int32(block_size), np.float32(scale), np.int32(sliding_window or 0), np.float32(softcap or 0.0),
            part_acc, part_max, part_sum))
    launch("paged_attention_decode.cu", "attention_decode_combine", (num_rows * num_heads,), (64,),
           (part_acc, part_max, part_sum, optional(sinks), np.int32(num_heads), np.int32(num_splits),
            np.int32(head_dim), out))
