"""CUDA norms, RoPE, activations and the KV write vs the NumPy reference."""
from __future__ import annotations

import numpy as np
import pytest

from cupyserve.kernels.reference import activation, attention, norm, rope

from quant_samples import rel_error

pytestmark = pytest.mark.gpu
FLOAT32_TOLERANCE = 2e-6  # elementwise float32 math, different reduction order / libm


def _dev(x):
    import cupy

    return cupy.asarray(x)


def _host(x):
    import cupy

    return cupy.asnumpy(x)


# Widths for every values-per-thread step of the single-pass kernel (norm.rms_norm_shape: 1 up
# to 1024, 2 up to 2048, ..., 16 up to 16384), CTAs that end in a partial warp (33, 5000) and
# ones that fill 1024 threads exactly (2048, 8192, 16384).
@pytest.mark.parametrize("num_tokens,hidden", [(1, 576), (7, 64), (130, 960), (3, 5000), (2, 33), (4, 1056),
                                               (3, 2048), (5, 4000), (2, 8192), (1, 16384)])
def test_rms_norms(cuda_ops, num_tokens, hidden):
    rng = np.random.default_rng(hidden + num_tokens)
    x = rng.standard_normal((num_tokens, hidden), dtype=np.float32) * 3
    residual = rng.standard_normal((num_tokens, hidden), dtype=np.float32)
    weight = rng.standard_normal(hidden, dtype=np.float32)
    assert rel_error(_host(cuda_ops.rms_norm(_dev(x), _dev(weight), 1e-5)),
                     norm.rms_norm(x, weight, 1e-5)) < FLOAT32_TOLERANCE
    normed, summed = cuda_ops.add_rms_norm(_dev(x), _dev(residual), _dev(weight), 1e-6)
    ref_normed, ref_summed = norm.add_rms_norm(x, residual, weight, 1e-6)
    np.testing.assert_array_equal(_host(summed), ref_summed)
    assert rel_error(_host(normed), ref_normed) < FLOAT32_TOLERANCE
    heads = x.reshape(num_tokens, -1, hidden)[:, :, :]
    assert rel_error(_host(cuda_ops.head_rms_norm(_dev(heads), _dev(weight), 1e-6)),
                     norm.head_rms_norm(heads, weight, 1e-6)) < FLOAT32_TOLERANCE


def test_rms_norm_refuses_rows_past_its_register_budget(cuda_ops):
    from cupyserve.kernels.cuda.norm import RMS_NORM_MAX_HIDDEN

    x = _dev(np.ones((1, RMS_NORM_MAX_HIDDEN + 32), np.float32))
    with pytest.raises(ValueError, match="at most"):
        cuda_ops.rms_norm(x, x[0], 1e-5)


@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm(cuda_ops, with_bias):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((17, 768), dtype=np.float32) + 2.0
    weight = rng.standard_normal(768, dtype=np.float32)
    bias = rng.standard_normal(768, dtype=np.float32) if with_bias else None
    actual = cuda_ops.layer_norm(_dev(x), _dev(weight), None if bias is None else _dev(bias), 1e-5)
    assert rel_error(_host(actual), norm.layer_norm(x, weight, bias, 1e-5)) < FLOAT32_TOLERANCE


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("num_tokens,hidden", [(1, 768), (9, 256), (130, 1600), (2, 33)])
def test_add_layer_norm(cuda_ops, with_bias, num_tokens, hidden):
    rng = np.random.default_rng(num_tokens + hidden)
    x = rng.standard_normal((num_tokens, hidden), dtype=np.float32) * 3
    residual = rng.standard_normal((num_tokens, hidden), dtype=np.float32) + 1.0
    weight = rng.standard_normal(hidden, dtype=np.float32)
    bias = rng.standard_normal(hidden, dtype=np.float32) if with_bias else None
    normed, summed = cuda_ops.add_layer_norm(_dev(x), _dev(residual), _dev(weight),
                                             None if bias is None else _dev(bias), 1e-5)
    ref_normed, ref_summed = norm.add_layer_norm(x, residual, weight, bias, 1e-5)
    np.testing.assert_array_equal(_host(summed), ref_summed)
    assert rel_error(_host(normed), ref_normed) < FLOAT32_TOLERANCE


@pytest.mark.parametrize("style", ["normal", "neox"])
@pytest.mark.parametrize("num_tokens,num_heads,head_dim,rope_dim", [(1, 9, 64, 64), (37, 4, 128, 64), (5, 2, 256, 256)])
def test_rope(cuda_ops, style, num_tokens, num_heads, head_dim, rope_dim):
    rng = np.random.default_rng(num_tokens * head_dim)
    positions = rng.integers(0, 40000, size=num_tokens).astype(np.int32)
    factors = rng.uniform(1.0, 8.0, size=rope_dim // 2).astype(np.float32)
    for freq_factors, scale in [(None, 1.0), (factors, 0.25)]:
        cos, sin = cuda_ops.rope_cos_sin(_dev(positions), rope_dim, 10000.0, freq_factors, scale)
        ref_cos, ref_sin = rope.rope_cos_sin(positions, rope_dim, 10000.0, freq_factors, scale)
        np.testing.assert_allclose(_host(cos), ref_cos, rtol=0, atol=1e-6)
        np.testing.assert_allclose(_host(sin), ref_sin, rtol=0, atol=1e-6)
    # q as a row-strided view of a fused qkv output, like the model passes it.
    qkv = rng.standard_normal((num_tokens, num_heads * head_dim + 100), dtype=np.float32)
    q_host = qkv[:, : num_heads * head_dim].reshape(num_tokens, num_heads, head_dim)
    q_dev = _dev(qkv)[:, : num_heads * head_dim].reshape(num_tokens, num_heads, head_dim)
    actual = cuda_ops.apply_rope(q_dev, _dev(ref_cos), _dev(ref_sin), style)
    expected = rope.apply_rope(q_host, ref_cos, ref_sin, style)
    np.testing.assert_array_equal(_host(actual), expected)


@pytest.mark.parametrize("style", ["normal", "neox"])
@pytest.mark.parametrize("num_tokens,num_heads,num_kv_heads,head_dim,rope_dim",
                         [(1, 9, 3, 64, 64), (37, 14, 2, 64, 64), (6, 32, 32, 96, 32), (3, 4, 1, 256, 256),
                          (5, 15, 5, 80, 64), (2, 1, 1, 2, 2), (8, 7, 7, 34, 18)])
def test_rope_write_kv_equals_rope_then_write_kv(cuda_ops, style, num_tokens, num_heads, num_kv_heads,
                                                 head_dim, rope_dim):
    """The fused launch gives exactly apply_rope(q), apply_rope(k) then write_kv(k, v) (CUDA and the
    reference): q bit for bit (its output starts as NaN: conftest), every cache slot bit for bit
    (untouched slots too; padding slots -1 are skipped)."""
    rng = np.random.default_rng(num_tokens * num_heads + head_dim)
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    qkv = rng.standard_normal((num_tokens, q_size + 2 * kv_size), dtype=np.float32)
    positions = rng.integers(0, 4000, size=num_tokens).astype(np.int32)
    cos, sin = rope.rope_cos_sin(positions, rope_dim, 10000.0)
    block_size, num_blocks = 16, num_tokens + 2
    slots = rng.permutation(num_blocks * block_size)[:num_tokens].astype(np.int64)
    slots[num_tokens // 2:: 3] = -1  # padding rows of a graph bucket (the middle one at least)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    cache = rng.standard_normal(shape).astype(np.float16)

    def split(x):
        return (x[:, :q_size].reshape(num_tokens, num_heads, head_dim),
                x[:, q_size:q_size + kv_size].reshape(num_tokens, num_kv_heads, head_dim),
                x[:, q_size + kv_size:].reshape(num_tokens, num_kv_heads, head_dim))

    k_ref, v_ref = cache.copy(), cache.copy()
    q_h, k_h, v_h = split(qkv)
    expected_q = rope.apply_rope(q_h, cos, sin, style)
    attention.write_kv(k_ref, v_ref, rope.apply_rope(k_h, cos, sin, style), v_h, slots)
    # The unfused CUDA path (three launches) gives the same bits.
    q_d, k_d, v_d = split(_dev(qkv))
    k_unfused, v_unfused = _dev(cache), _dev(cache)
    unfused_q = cuda_ops.apply_rope(q_d, _dev(cos), _dev(sin), style)
    cuda_ops.write_kv(k_unfused, v_unfused, cuda_ops.apply_rope(k_d, _dev(cos), _dev(sin), style), v_d,
                      _dev(slots))
    k_dev, v_dev = _dev(cache), _dev(cache)
    cos_d, sin_d, slots_d = _dev(cos), _dev(sin), _dev(slots)
    actual_q = cuda_ops.rope_write_kv(q_d, k_d, v_d, cos_d, sin_d, style, k_dev, v_dev, slots_d)
    np.testing.assert_array_equal(_host(actual_q), expected_q)
    np.testing.assert_array_equal(_host(actual_q), _host(unfused_q))
    np.testing.assert_array_equal(_host(k_dev), k_ref)
    np.testing.assert_array_equal(_host(v_dev), v_ref)
    np.testing.assert_array_equal(_host(k_dev), _host(k_unfused))
    np.testing.assert_array_equal(_host(v_dev), _host(v_unfused))
    cpu_k, cpu_v = cache.copy(), cache.copy()
    np.testing.assert_array_equal(rope.rope_write_kv(q_h, k_h, v_h, cos, sin, style, cpu_k, cpu_v, slots),
                                  expected_q)
    np.testing.assert_array_equal(cpu_k, k_ref)
    np.testing.assert_array_equal(cpu_v, v_ref)


def test_rope_write_kv_refuses_mismatched_cache(cuda_ops):
    q = _dev(np.zeros((2, 4, 8), np.float32))
    k = v = _dev(np.zeros((2, 2, 8), np.float32))
    cos = sin = _dev(np.ones((2, 4), np.float32))
    cache = _dev(np.zeros((2, 4, 1, 8), np.float16))  # one kv head, k has two
    with pytest.raises(ValueError, match="caches"):
        cuda_ops.rope_write_kv(q, k, v, cos, sin, "neox", cache, cache.copy(), _dev(np.array([0, 1])))


@pytest.mark.parametrize("num_tokens,ffn", [(1, 1536), (9, 77), (200, 2048)])
def test_activations(cuda_ops, num_tokens, ffn):
    rng = np.random.default_rng(ffn)
    gate_up = rng.standard_normal((num_tokens, 2 * ffn), dtype=np.float32) * 4
    for name in ("swiglu", "geglu"):
        actual = _host(getattr(cuda_ops, name)(_dev(gate_up)))
        assert rel_error(actual, getattr(activation, name)(gate_up)) < FLOAT32_TOLERANCE, name
    x = gate_up[:, :ffn]
    assert rel_error(_host(cuda_ops.gelu(_dev(x))), activation.gelu_tanh(x)) < FLOAT32_TOLERANCE


@pytest.mark.parametrize("num_tokens", [1, 5, 300])
def test_write_kv(cuda_ops, num_tokens):
    rng = np.random.default_rng(num_tokens)
    num_blocks, block_size, kv_heads, head_dim = 40, 16, 3, 64
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache = np.full(shape, np.nan, np.float16)
    v_cache = np.full(shape, np.nan, np.float16)
    slots = rng.choice(num_blocks * block_size, size=num_tokens, replace=False).astype(np.int64)
    kv = rng.standard_normal((num_tokens, 2 * kv_heads * head_dim + 8), dtype=np.float32)
    k = kv[:, : kv_heads * head_dim].reshape(num_tokens, kv_heads, head_dim)
    v = kv[:, kv_heads * head_dim : 2 * kv_heads * head_dim].reshape(num_tokens, kv_heads, head_dim)
    dev_kv = _dev(kv)
    dev_k = dev_kv[:, : kv_heads * head_dim].reshape(num_tokens, kv_heads, head_dim)
    dev_v = dev_kv[:, kv_heads * head_dim : 2 * kv_heads * head_dim].reshape(num_tokens, kv_heads, head_dim)
    dev_k_cache, dev_v_cache = _dev(k_cache), _dev(v_cache)
    cuda_ops.write_kv(dev_k_cache, dev_v_cache, dev_k, dev_v, _dev(slots))
    attention.write_kv(k_cache, v_cache, k, v, slots)
    np.testing.assert_array_equal(_host(dev_k_cache), k_cache)  # NaN == NaN for untouched slots
    np.testing.assert_array_equal(_host(dev_v_cache), v_cache)
