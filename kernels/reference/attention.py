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
    flat_k[slot_mapping] = k
    flat_v[slot_mapping] = v


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
    for s in range(batch.num_seqs):
        q_begin, q_end = starts[s], starts[s + 1]
        query_len = q_end - q_begin
        context_len = batch.context_lens_host[s]
        keys = gather_context(k_cache, batch.block_tables[s], context_len)  # [ctx, kv, hd]
        values = gather_context(v_cache, batch.block_tables[s], context_len)
        # [kv, group * query_len, hd] so each KV head's queries run as one matmul.
        q_seq = q[q_begin:q_end].reshape(query_len, num_kv_heads, group, head_dim)
        q_seq = q_seq.transpose(1, 2, 0, 3).reshape(num_kv_heads, group * query_len, head_dim)
        scores = np.matmul(q_seq, keys.transpose(1, 2, 0)) * np.float32(scale)  # [kv, g*q, ctx]
        if softcap:
            scores = np.float32(softcap) * np.tanh(scores / np.float32(softcap))
        query_pos = np.arange(context_len - query_len, context_len)
        key_pos = np.arange(context_len)
        visible = key_pos[None, :] <= query_pos[:, None]  # [q, ctx]
        if sliding_window:
            visible &= query_pos[:, None] - key_pos[None, :] < sliding_window
        mask = np.where(visible, np.float32(0.0), np.float32(-np.inf))
        scores = scores.reshape(num_kv_heads, group, query_len, context_len) + mask
        row_max = scores.max(axis=-1, keepdims=True)
        if sinks is not None:
            sink = sinks.reshape(num_kv_heads, group, 1, 1).astype(np.float32)
            row_max = np.maximum(row_max, sink)
        weights = np.exp(scores - row_max)
        denom = weights.sum(axis=-1, keepdims=True)
        if sinks is not None:
            denom = denom + np.exp(sink - row_max)
        weights = (weights / denom).reshape(num_kv_heads, group * query_len, context_len)
        attended = np.matmul(weights, values.transpose(1, 0, 2))  # [kv, g*q, hd]
        attended = attended.reshape(num_kv_heads, group, query_len, head_dim).transpose(2, 0, 1, 3)
        out[q_begin:q_end] = attended.reshape(query_len, num_heads, head_dim)
    return out
