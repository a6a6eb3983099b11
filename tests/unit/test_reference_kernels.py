"""NumPy reference kernels: properties the CUDA twins are also held to."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from cupyserve.kernels.batch import AttentionBatch
from cupyserve.kernels.reference import attention, dequant, linear, norm, rope


def test_linear_rows_are_batch_invariant():
    """A row's result must not depend on how many rows share the call or where it sits."""
    rng = np.random.default_rng(1)
    weight = linear.DenseWeight(rng.standard_normal((300, 96)).astype(np.float32), "q8_32")
    generated = rng.random(37) < 0.5
    rows = rng.standard_normal((37, 96)).astype(np.float32)
    alone = np.stack([linear.linear(rows[i : i + 1], weight, generated_rows=generated[i : i + 1])[0]
                      for i in range(len(rows))])
    for begin, end in [(0, 37), (3, 20), (5, 6), (9, 17)]:
        batched = linear.linear(rows[begin:end], weight, generated_rows=generated[begin:end])
        assert np.array_equal(batched, alone[begin:end])
    # Both paths compute the same product (to float rounding).
    reference = linear.round_activations(rows, "q8_32").astype(np.float64) @ weight.matrix.T
    assert np.allclose(linear.linear(rows, weight, generated_rows=generated), reference, rtol=1e-4, atol=1e-4)


def test_q8_activation_rounding_matches_ggml_block_quantization():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 64)).astype(np.float32) * 5
    rounded = linear.round_activations(x, "q8_32")
    blocks = rounded.reshape(3, 2, 32)
    scale = np.abs(x.reshape(3, 2, 32)).max(-1, keepdims=True) / 127
    scale16 = scale.astype(np.float16).astype(np.float32)
    q = blocks / scale16
    assert np.allclose(q, np.rint(q), atol=1e-3)  # every value is an integer multiple of the scale
    assert np.abs(q).max() <= 127.5
    assert np.abs(rounded - x).max() <= scale.max() * 0.51 + 1e-6


@pytest.mark.parametrize("ggml_type", [T.Q4_0, T.Q4_1, T.Q8_0, T.Q5_0, T.Q6_K, T.Q4_K, T.MXFP4])
def test_dequantize_matches_gguf_reference(ggml_type):
    rng = np.random.default_rng(3)
    block, size = quants.GGML_QUANT_SIZES[ggml_type]
    num_cols = 256
    raw = rng.integers(0, 256, size=(4, num_cols // block * size), dtype=np.uint8)
    if ggml_type == T.MXFP4:
        raw.reshape(-1, size)[:, 0] = rng.integers(110, 135, size=raw.size // size)  # sane scales
    else:  # keep fp16 scale fields finite: clear the exponent's top bits of every byte pair
        raw &= 0x3B
    ours = dequant.dequantize(raw, ggml_type, num_cols)
    theirs = quants.dequantize(raw, ggml_type).reshape(4, num_cols)
    assert np.array_equal(ours, theirs.astype(np.float32))


def _naive_attention(q, keys, values, query_pos, scale, window=0, sinks=None):
    """Per head, per query: softmax over visible keys (float64)."""
    num_q, num_heads, _ = q.shape
    num_kv_heads = keys.shape[1]
    out = np.zeros(q.shape)
    for i in range(num_q):
        for h in range(num_heads):
            kv = h // (num_heads // num_kv_heads)
            visible = [j for j in range(len(keys)) if j <= query_pos[i]
                       and (not window or query_pos[i] - j < window)]
            scores = np.array([q[i, h] @ keys[j, kv] for j in visible], dtype=np.float64) * scale
            m = scores.max() if sinks is None else max(scores.max(), sinks[h])
            w = np.exp(scores - m)
            denom = w.sum() + (0.0 if sinks is None else np.exp(sinks[h] - m))
            out[i, h] = (w / denom) @ values[visible, kv]
    return out


@pytest.mark.parametrize("window,with_sinks", [(0, False), (5, False), (0, True)])
def test_paged_attention_matches_naive(window, with_sinks):
    rng = np.random.default_rng(4)
    block_size, num_blocks, num_heads, num_kv_heads, head_dim = 4, 16, 6, 2, 8
    k_cache = np.zeros((num_blocks, block_size, num_kv_heads, head_dim), np.float16)
    v_cache = np.zeros_like(k_cache)
    context_lens, query_lens = [9, 13], [9, 1]  # a prefill and a decode in one batch
    tables = [[3, 7, 1], [0, 5, 9, 2]]
    q_rows, slots, positions, all_keys = [], [], [], []
    for ctx, qlen, table in zip(context_lens, query_lens, tables):
        keys = rng.standard_normal((ctx, num_kv_heads, head_dim)).astype(np.float16)
        values = rng.standard_normal((ctx, num_kv_heads, head_dim)).astype(np.float16)
        all_slots = [table[p // block_size] * block_size + p % block_size for p in range(ctx)]
        attention.write_kv(k_cache, v_cache, keys.astype(np.float32), values.astype(np.float32),
                           np.array(all_slots))
        all_keys.append((keys.astype(np.float32), values.astype(np.float32)))
        q_rows.append(rng.standard_normal((qlen, num_heads, head_dim)).astype(np.float32))
        positions.extend(range(ctx - qlen, ctx))
    q = np.concatenate(q_rows)
    block_tables = np.zeros((2, 4), np.int32)
    for s, table in enumerate(tables):
        block_tables[s, : len(table)] = table
    batch = AttentionBatch(query_start=np.array([0, 9, 10]), context_lens=np.array(context_lens),
                           block_tables=block_tables, slot_mapping=np.zeros(10, np.int64),
                           positions=np.array(positions), num_seqs=2, max_query_len=9,
                           max_context_len=13, query_start_host=(0, 9, 10),
                           context_lens_host=tuple(context_lens))
    sinks = rng.standard_normal(num_heads).astype(np.float32) if with_sinks else None
    out = attention.paged_attention(q, k_cache, v_cache, batch, 0.35, sliding_window=window, sinks=sinks)
    for s, (begin, end) in enumerate([(0, 9), (9, 10)]):
        keys, values = all_keys[s]
        expected = _naive_attention(q[begin:end], keys, values, positions[begin:end], 0.35, window, sinks)
        assert np.allclose(out[begin:end], expected, atol=2e-5)


def test_rope_styles_rotate_the_right_pairs():
    x = np.arange(8, dtype=np.float32).reshape(1, 1, 8) + 1
    cos, sin = rope.rope_cos_sin(np.array([1]), 8, 10000.0)
    normal = rope.apply_rope(x, cos, sin, "normal")
    neox = rope.apply_rope(x, cos, sin, "neox")
    c, s = cos[0, 0], sin[0, 0]
    assert np.isclose(normal[0, 0, 0], x[0, 0, 0] * c - x[0, 0, 1] * s)  # pair (0, 1)
    assert np.isclose(neox[0, 0, 0], x[0, 0, 0] * c - x[0, 0, 4] * s)  # pair (0, 4)
    assert np.allclose(np.linalg.norm(normal), np.linalg.norm(x))  # rotations keep the norm


def test_add_rms_norm_fuses_residual():
    rng = np.random.default_rng(5)
    x, residual = rng.standard_normal((2, 2, 16)).astype(np.float32)
    weight = rng.standard_normal(16).astype(np.float32)
    normed, summed = norm.add_rms_norm(x, residual, weight, 1e-5)
    expected = (x + residual) / np.sqrt(((x + residual) ** 2).mean(-1, keepdims=True) + 1e-5) * weight
    assert np.array_equal(summed, x + residual)
    assert np.allclose(normed, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_bias", [True, False])
def test_add_layer_norm_fuses_residual(with_bias):
    rng = np.random.default_rng(6)
    x, residual = (rng.standard_normal((2, 3, 48)) + 1.5).astype(np.float32)
    weight = rng.standard_normal(48).astype(np.float32)
    bias = rng.standard_normal(48).astype(np.float32) if with_bias else None
    normed, summed = norm.add_layer_norm(x, residual, weight, bias, 1e-5)
    total = (x + residual).astype(np.float64)
    centered = total - total.mean(-1, keepdims=True)
    expected = centered / np.sqrt((centered**2).mean(-1, keepdims=True) + 1e-5) * weight + (0 if bias is None else bias)
    assert np.array_equal(summed, x + residual)
    assert np.allclose(normed, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(normed, norm.layer_norm(x + residual, weight, bias, 1e-5))


def test_write_kv_skips_padding_slots():
    """Slot -1 marks a padding row (CUDA graph buckets): it is written nowhere, as on the GPU."""
    rng = np.random.default_rng(3)
    k = rng.standard_normal((3, 2, 8), dtype=np.float32)
    v = rng.standard_normal((3, 2, 8), dtype=np.float32)
    k_cache = np.zeros((2, 4, 2, 8), np.float16)
    v_cache = np.zeros_like(k_cache)
    attention.write_kv(k_cache, v_cache, k, v, np.array([1, 6, -1], np.int64))
    flat_k, flat_v = k_cache.reshape(8, 2, 8), v_cache.reshape(8, 2, 8)
    np.testing.assert_array_equal(flat_k[[1, 6]], k[:2].astype(np.float16))
    np.testing.assert_array_equal(flat_v[[1, 6]], v[:2].astype(np.float16))
    assert not flat_k[[0, 2, 3, 4, 5, 7]].any() and not flat_v[[0, 2, 3, 4, 5, 7]].any()


def test_rope_write_kv_is_rope_then_write_kv():
    """The fused op's reference (the contract of its CUDA twin): q rotated, rotated k and v in the cache."""
    rng = np.random.default_rng(7)
    q = rng.standard_normal((3, 4, 8), dtype=np.float32)
    k = rng.standard_normal((3, 2, 8), dtype=np.float32)
    v = rng.standard_normal((3, 2, 8), dtype=np.float32)
    cos, sin = rope.rope_cos_sin(np.array([0, 5, 9], np.int32), 8, 10000.0)
    k_cache = np.zeros((2, 4, 2, 8), np.float16)
    v_cache = np.zeros_like(k_cache)
    slots = np.array([1, 6, -1], np.int64)
    q_rot = rope.rope_write_kv(q, k, v, cos, sin, "neox", k_cache, v_cache, slots)
    np.testing.assert_array_equal(q_rot, rope.apply_rope(q, cos, sin, "neox"))
    flat_k, flat_v = k_cache.reshape(8, 2, 8), v_cache.reshape(8, 2, 8)
    k_rot = rope.apply_rope(k, cos, sin, "neox")
    np.testing.assert_array_equal(flat_k[[1, 6]], k_rot[:2].astype(np.float16))
    np.testing.assert_array_equal(flat_v[[1, 6]], v[:2].astype(np.float16))
    assert not flat_k[[0, 2, 3, 4, 5, 7]].any()  # the padding row (slot -1) wrote nothing
