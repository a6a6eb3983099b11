"""CUDA linear (fused GEMV and dequantize + cuBLAS paths) and embedding vs the NumPy reference."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from cupyserve.kernels.reference import linear as reference
from cupyserve.kernels.reference.dequant import dequantize

from quant_samples import random_weight, rel_error

pytestmark = pytest.mark.gpu

BLOCK32_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.MXFP4]
KQUANT_TYPES = [T.Q4_K, T.Q5_K, T.Q6_K]
FLOAT_TYPES = [T.F32, T.F16, T.BF16]
ALL_TYPES = BLOCK32_TYPES + KQUANT_TYPES + FLOAT_TYPES
# GEMV: same rounded activations, only the float32 summation order differs.
GEMV_TOLERANCE = 2e-5
# cuBLAS path: rounded activations and dequantized weights are each stored as fp16 (2^-11).
GEMM_TOLERANCE = 2e-3


def _cols_for(ggml_type: T, base: int) -> int:
    return base * 256 if ggml_type in KQUANT_TYPES else base * 32 + 32 * 3  # odd block counts


@pytest.mark.parametrize("ggml_type", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("num_tokens", [1, 2, 3, 5, 8, 9, 33, 130])
def test_linear_matches_reference(cuda_ops, ggml_type, num_tokens):
    import cupy

    rng = np.random.default_rng([int(ggml_type), num_tokens])
    rows = int(rng.choice([1, 37, 255, 1000]))
    cols = _cols_for(ggml_type, int(rng.integers(1, 4)))
    raw = random_weight(ggml_type, rows, cols, rng)
    x = rng.standard_normal((num_tokens, cols), dtype=np.float32)
    x[:, : cols // 7] *= 20.0  # uneven magnitudes across blocks
    expected = reference.linear(x, reference.load_weight([raw], [ggml_type], cols))
    weight = cuda_ops.load_weight([raw], [ggml_type], cols)
    assert weight.num_bytes == raw.nbytes  # stays in its block format
    actual = cupy.asnumpy(cuda_ops.linear(cupy.asarray(x), weight))
    tolerance = GEMV_TOLERANCE if num_tokens <= 8 else GEMM_TOLERANCE
    assert actual.shape == expected.shape
    assert rel_error(actual, expected) < tolerance


@pytest.mark.parametrize("num_tokens", [1, 4, 8, 17])
def test_fused_parts_of_mixed_types_with_bias(cuda_ops, num_tokens):
    """q|k|v fused across Q4_1 / Q8_0 / Q4_1 (one segment per type run) plus a bias."""
    import cupy

    rng = np.random.default_rng(num_tokens)
    cols = 576
    types = [T.Q4_1, T.Q4_1, T.Q8_0, T.Q4_0]
    raws = [random_weight(t, r, cols, rng) for t, r in zip(types, [64, 33, 65, 7])]
    bias = rng.standard_normal(sum(r.shape[0] for r in raws), dtype=np.float32)
    x = rng.standard_normal((num_tokens, cols), dtype=np.float32)
    assert cuda_ops.can_fuse(types) and not cuda_ops.can_fuse([T.Q4_1, T.Q4_K])
    expected = reference.linear(x, reference.load_weight(raws, types, cols), bias)
    weight = cuda_ops.load_weight(raws, types, cols)
    assert [s.ggml_type for s in weight.segments] == [T.Q4_1, T.Q8_0, T.Q4_0]
    actual = cupy.asnumpy(cuda_ops.linear(cupy.asarray(x), weight, cupy.asarray(bias)))
    tolerance = GEMV_TOLERANCE if num_tokens <= 8 else GEMM_TOLERANCE
    assert rel_error(actual, expected) < tolerance


def test_strided_input_and_small_batch_invariance(cuda_ops):
    """A token's row is the same alone or among up to 8 (the GEMV path), and views are accepted."""
    import cupy

    rng = np.random.default_rng(7)
    cols = 576
    raw = random_weight(T.Q4_1, 300, cols, rng)
    weight = cuda_ops.load_weight([raw], [T.Q4_1], cols)
    wide = cupy.asarray(rng.standard_normal((8, 2 * cols), dtype=np.float32))
    x = wide[:, :cols]  # row-strided view
    batched = cupy.asnumpy(cuda_ops.linear(x, weight))
    alone = cupy.asnumpy(cuda_ops.linear(x[3:4], weight))
    np.testing.assert_array_equal(batched[3:4], alone)


@pytest.mark.parametrize("ggml_type", FLOAT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows,cols", [(32, 2880), (7, 9600), (600, 2880)])
def test_float_gemv_split_rows_match_reference_and_batch(cuda_ops, ggml_type, rows, cols):
    """gemv_float splits a row over a CTA's warps for matrices of few rows (the gpt-oss router's
    32 x 2880): it still matches the reference, and a token's row is the same alone or among 8."""
    import cupy

    from cupyserve.kernels.cuda import linear

    assert (rows <= linear.GEMV_FLOAT_SPLIT_MAX_ROWS) == (rows < 600)
    rng = np.random.default_rng([int(ggml_type), rows, cols])
    raw = random_weight(ggml_type, rows, cols, rng)
    x = rng.standard_normal((8, cols), dtype=np.float32)
    expected = reference.linear(x, reference.load_weight([raw], [ggml_type], cols))
    weight = cuda_ops.load_weight([raw], [ggml_type], cols)
    batched = cupy.asnumpy(cuda_ops.linear(cupy.asarray(x), weight))
    assert rel_error(batched, expected) < GEMV_TOLERANCE
    alone = cupy.asnumpy(cuda_ops.linear(cupy.asarray(x[5:6]), weight))
    np.testing.assert_array_equal(batched[5:6], alone)


@pytest.mark.parametrize("ggml_type", ALL_TYPES, ids=lambda t: t.name)
def test_embedding_gather(cuda_ops, ggml_type):
    import cupy

    rng = np.random.default_rng(int(ggml_type) + 100)
    vocab, cols = 301, _cols_for(ggml_type, 2)
    raw = random_weight(ggml_type, vocab, cols, rng)
    token_ids = rng.integers(0, vocab, size=77).astype(np.int32)
    token_ids[:3] = [0, vocab - 1, 0]
    expected = reference.embedding(reference.load_weight([raw], [ggml_type], cols), token_ids)
    weight = cuda_ops.load_weight([raw], [ggml_type], cols)
    actual = cupy.asnumpy(cuda_ops.embedding(weight, cupy.asarray(token_ids)))
    # Dequantization repeats the reference's float32 operations one by one: bit-identical.
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("ggml_type", ALL_TYPES, ids=lambda t: t.name)
def test_dequantized_fp16_tile_is_the_reference_rounded(cuda_ops, ggml_type):
    """The fp16 tiles fed to cuBLAS: rows first_row.. of the weight, each value the reference's
    float32 rounded to nearest fp16; and float32 rows gathered by id, bit for bit. 4128 / 4352
    columns: each row takes a full CTA of 128 chunks and a partial one."""
    import cupy

    from cupyserve.kernels.cuda import linear

    rng = np.random.default_rng(int(ggml_type) + 200)
    rows, cols = 23, 4352 if ggml_type in KQUANT_TYPES else 4128
    raw = random_weight(ggml_type, rows, cols, rng)
    weight = cuda_ops.load_weight([raw], [ggml_type], cols)
    seg = weight.segments[0]
    expected = dequantize(raw, ggml_type, cols)[5:19].astype(np.float16)
    tile = linear.dequantize_rows(seg.raw, seg.ggml_type, cols, np.float16, first_row=5, num_out_rows=14)
    np.testing.assert_array_equal(cupy.asnumpy(tile).view(np.uint16), expected.view(np.uint16))
    gathered = linear.dequantize_rows(seg.raw, seg.ggml_type, cols, np.float32,
                                      row_ids=cupy.asarray([22, 0, 7], dtype=np.int32))
    np.testing.assert_array_equal(cupy.asnumpy(gathered), dequantize(raw, ggml_type, cols)[[22, 0, 7]])


def test_unsupported_type_is_an_error(cuda_ops):
    with pytest.raises(ValueError, match="no CUDA kernel"):
        cuda_ops.load_weight([np.zeros((1, 36), np.uint8)], [T.IQ4_NL], 64)
