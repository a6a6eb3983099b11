"""Paged-KV attention reference kernels.

K/V per layer: `[num_blocks, block_size, num_kv_heads, head_dim]` fp16; a token's slot is
`block * block_size + offset`. Math in float32, like ggml's flash-attention path with an f16 cache.
"""
from __future__ import annotations

import numpy as np

from ..batch import AttentionBatch


def write_kv(
    k_cache: np.ndarray,  # [num_blocks, block_size, num_kv_heads, head_dim] float16
    v_cache: np.ndarray,  # [num_blocks, block_size, num_kv_heads, head_dim] float16
    k: np.ndarray,  # [num_tokens, num_kv_heads, head_dim] float32
    v: np.ndarray,  # [num_tokens, num_kv_heads, head_dim] float32
    slot_mapping: np.ndarray,  # [num_tokens] int64
) -> None:
    num_blocks, block_size = k_cache.shape[:2]
    flat_k = k_cache.reshape(num_blocks * block_size, *k_cache.shape[2:])
    flat_v = v_cache.reshape(num_blocks * block_size, *v_cache.shape[2:])
    keep = slot_mapping >= 0  # negative slots are padding rows (CUDA graph buckets): written nowhere
    flat_k[slot_mapping[keep]] = k[keep]
    flat_v[slot_mapping[keep]] = v[keep]


def gather_context(
    cache: np.ndarray,  # [num_blocks, block_size, num_kv_heads, head_dim] float16
    block_table: np.ndarray,  # [max_blocks_per_seq] int32
    context_len: int,
) -> np.ndarray:  # [context_len, num_kv_heads, head_dim] float32
    block_size = cache.shape[1]
    num_blocks = -(-context_len // block_size)
    gathered = cache[block_table[:num_blocks]].reshape(-1, *cache.shape[2:])
    return gathered[:context_len].astype(np.float32)


def paged_attention(
    q: np.ndarray,  # [num_tokens, num_heads, head_dim] float32
    k_cache: np.ndarray,  # [num_blocks, block_size, num_kv_heads, head_dim] float16
    v_cache: np.ndarray,  # [num_blocks, block_size, num_kv_heads, head_dim] float16
    batch: AttentionBatch,
    scale: float,
    sliding_window: int = 0,  # 0 = full attention; else a key is visible if pos_q - pos_k < window
    sinks: np.ndarray | None = None,  # [num_heads] float32: extra logit in each softmax denominator
    softcap: float = 0.0,
) -> np.ndarray:  # [num_tokens, num_heads, head_dim] float32
    """Causal GQA attention of every query row over its own sequence's cached context."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = np.empty_like(q)
    starts = batch.query_start_host
    # Batch invariance: every query row is computed alone, over exactly its own visible keys, so
    # its matmul shapes (hence BLAS kernels and rounding) never depend on how its sequence was
    # chunked or what else shares the step. Same logits alone, batched, chunked or after a
    # prefix-cache hit (the engine's batch-invariance tests need this, like linear's row tiles).
    for s in range(batch.num_seqs):
        q_begin, q_end = starts[s], starts[s + 1]
        query_len = q_end - q_begin
        context_len = batch.context_lens_host[s]
        keys = gather_context(k_cache, batch.block_tables[s], context_len).transpose(1, 2, 0)  # [kv, hd, ctx]
        values = gather_context(v_cache, batch.block_tables[s], context_len).transpose(1, 0, 2)  # [kv, ctx, hd]
        for row in range(query_len):
            position = context_len - query_len + row
            first = max(0, position + 1 - sliding_window) if sliding_window else 0
            q_row = q[q_begin + row].reshape(num_kv_heads, group, head_dim)
            scores = np.matmul(q_row, keys[:, :, first:position + 1]) * np.float32(scale)  # [kv, g, n]
            if softcap:
                scores = np.float32(softcap) * np.tanh(scores / np.float32(softcap))
            row_max = scores.max(axis=-1, keepdims=True)
            if sinks is not None:
                sink = sinks.reshape(num_kv_heads, group, 1).astype(np.float32)
                row_max = np.maximum(row_max, sink)
            weights = np.exp(scores - row_max)
            denom = weights.sum(axis=-1, keepdims=True)
            if sinks is not None:
                denom = denom + np.exp(sink - row_max)
            attended = np.matmul(weights / denom, values[:, first:position + 1])  # [kv, g, hd]
            out[q_begin + row] = attended.reshape(num_heads, head_dim)
    return out
