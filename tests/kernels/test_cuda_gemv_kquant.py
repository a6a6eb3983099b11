"""The k-quant int8 GEMV (kernels/cuda/gemv_kquant.cu) vs the NumPy reference.

The expected result is the reference's own math, summed exactly: its q8_256-rounded activations
(`round_activations`) times its dequantized weights (`dequantize`), in float64. The kernel
multiplies the same codes exactly in integers, so it may differ only by float32 rounding of the
scale products and partial sums: bounded by RELATIVE_BOUND times sum(|a| * (|d sc q| + |dmin m|)),
the sum of the magnitudes the reference itself rounds.
"""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from cupyserve.kernels.reference import linear as reference
from cupyserve.kernels.reference.dequant import dequantize

from quant_samples import random_weight

pytestmark = pytest.mark.gpu

KQUANT_TYPES = [T.Q4_K, T.Q5_K, T.Q6_K]
IN_FEATURES = [256, 768, 2048, 2816, 4096, 5632]
# float32 rounding of d * sum(sc * dot), its min term, the activation scale and ~60 partial sums.
RELATIVE_BOUND = 1e-5
FP16_MAX = 0x7BFF  # 65504


def _magnitude(raw: np.ndarray, ggml_type: T, cols: int) -> np.ndarray:  # [rows, cols] float64
    """|d sc q| + |dmin m| per weight value: the reference dequantizes blocks whose d is made
    positive and dmin negative (Q4_K/Q5_K: d sc q - dmin m); Q6_K has no min, so |w|."""
    if ggml_type == T.Q6_K:
        return np.abs(dequantize(raw, ggml_type, cols).astype(np.float64))
    blocks = raw.reshape(-1, 144 if ggml_type == T.Q4_K else 176).copy()
    fields = blocks[:, :4].copy().view(np.uint16)  # [num_blocks, 2]: d, dmin
    fields[:, 0] &= 0x7FFF
    fields[:, 1] |= 0x8000
    blocks[:, :4] = fields.view(np.uint8)
    return dequantize(blocks.reshape(raw.shape), ggml_type, cols).astype(np.float64)


def _expected(x: np.ndarray, raw: np.ndarray, ggml_type: T, cols: int):
    """(reference result in float64, its error bound) for activations x [num_tokens, cols]."""
    rounded = reference.round_activations(x, "q8_256").astype(np.float64)
    weight = dequantize(raw, ggml_type, cols).astype(np.float64)
    bound = RELATIVE_BOUND * (np.abs(rounded) @ _magnitude(raw, ggml_type, cols).T)
    return rounded @ weight.T, bound


def _adversarial_weight(ggml_type: T, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random blocks mixed with extreme ones: fp16-max scales with all-max codes and scale bytes,
    zero scales, negative d, min-only blocks and (Q6_K) int8 scales at -128 / 127."""
    raw = random_weight(ggml_type, rows, cols, rng)
    block_bytes = {T.Q4_K: 144, T.Q5_K: 176, T.Q6_K: 210}[ggml_type]
    blocks = raw.reshape(-1, block_bytes)
    kinds = rng.integers(0, 5, size=blocks.shape[0])  # 0: random as drawn
    for index in np.flatnonzero(kinds):
        block = blocks[index]
        if ggml_type == T.Q6_K:
            d = block[208:210].view(np.uint16)
            if kinds[index] == 1:  # largest codes and scales
                block[:192] = 0xFF
                block[192:208] = rng.choice([0x80, 0x7F], size=16).astype(np.uint8)
                d[0] = FP16_MAX
            elif kinds[index] == 2:
                d[0] = 0
            elif kinds[index] == 3:
                d[0] |= 0x8000
            else:  # smallest codes (q - 32 = -32)
                block[:192] = 0
        else:
            d_dmin = block[:4].view(np.uint16)
            if kinds[index] == 1:
                block[4:] = 0xFF
                d_dmin[:] = FP16_MAX
            elif kinds[index] == 2:
                d_dmin[:] = 0
            elif kinds[index] == 3:
                d_dmin[0] |= 0x8000
            else:  # the min term alone
                d_dmin[0] = 0
                block[4:16] = 0xFF
    return raw


def _adversarial_activations(num_tokens: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Per 256-block: random, constant (all codes 127), alternating +-max, zero, one outlier."""
    x = rng.standard_normal((num_tokens, cols), dtype=np.float32)
    blocks = x.reshape(num_tokens, cols // 256, 256)
    kinds = rng.integers(0, 5, size=blocks.shape[:2])
    blocks[kinds == 1] = np.float32(3.5)
    blocks[kinds == 2] = np.float32(1e4) * np.where(np.arange(256) % 2, 1, -1).astype(np.float32)
    blocks[kinds == 3] = 0.0
    blocks[kinds == 4, 17] = np.float32(-1e3)
    return x


def _load(cuda_ops, raw, ggml_type, cols):
    weight = cuda_ops.load_weight([raw], [ggml_type], cols)
    assert weight.rounding == "q8_256"
    return weight


@pytest.mark.parametrize("num_tokens", range(1, 9))
@pytest.mark.parametrize("cols", IN_FEATURES)
def test_codes_equal_reference_rounding(cuda_ops, num_tokens, cols):
    """code * scale is the reference's q8_256 rounding bit for bit; sums are the codes' sums."""
    import cupy

    from cupyserve.kernels.cuda.gemv_kquant import quantize_q8_256

    rng = np.random.default_rng([num_tokens, cols])
    x = _adversarial_activations(num_tokens, cols, rng)
    x[0, :256] *= np.float32(1e-30)  # tiny block (1 / scale stays finite down to ~1e-36)
    q = quantize_q8_256(cupy.asarray(x))
    codes, scales, sums = (cupy.asnumpy(a) for a in q)
    blocks = x.reshape(num_tokens, cols // 256, 256)
    np.testing.assert_array_equal(scales, np.abs(blocks).max(axis=-1) / np.float32(127.0))
    assert codes.dtype == np.int8 and np.abs(codes.astype(np.int32)).max() <= 127
    rebuilt = codes.astype(np.float32) * np.repeat(scales, 256, axis=1)
    # Equal values (the reference's rint can give -0.0 where an int8 code is 0; 0 * scale == -0.0).
    np.testing.assert_array_equal(rebuilt, reference.round_activations(x, "q8_256"))
    np.testing.assert_array_equal(sums, codes.reshape(num_tokens, -1, 32).astype(np.int32).sum(-1))


@pytest.mark.parametrize("ggml_type", KQUANT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("num_tokens", range(1, 9))
def test_linear_kquant_matches_reference(cuda_ops, ggml_type, num_tokens):
    """Through cuda_ops.linear (the _gemv dispatch), every in_features, odd row counts."""
    import cupy

    for cols in IN_FEATURES:
        rng = np.random.default_rng([int(ggml_type), num_tokens, cols])
        rows = int(rng.choice([1, 3, 37, 255, 301]))
        raw = random_weight(ggml_type, rows, cols, rng)
        x = rng.standard_normal((num_tokens, cols), dtype=np.float32)
        x[:, : cols // 7] *= 20.0
        expected, bound = _expected(x, raw, ggml_type, cols)
        actual = cupy.asnumpy(cuda_ops.linear(cupy.asarray(x), _load(cuda_ops, raw, ggml_type, cols)))
        assert np.all(np.abs(actual - expected) <= bound), (cols, rows)


@pytest.mark.parametrize("ggml_type", KQUANT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("num_tokens", [1, 2, 5, 8])
@pytest.mark.parametrize("rows_per_warp", [1, 2, 4])
def test_adversarial_blocks_every_rows_per_warp(cuda_ops, ggml_type, num_tokens, rows_per_warp):
    """Extreme blocks and activations; the kernel writes exactly its rows' columns of a wider,
    NaN-poisoned output (odd row counts leave a warp's last rows out of range)."""
    import cupy

    from cupyserve.kernels.cuda.gemv_kquant import gemv_kquant, quantize_q8_256

    for cols in [256, 2816, 5632]:
        rng = np.random.default_rng([int(ggml_type), num_tokens, rows_per_warp, cols])
        rows = int(rng.choice([1, 5, 7, 131]))
        raw = _adversarial_weight(ggml_type, rows, cols, rng)
        x = _adversarial_activations(num_tokens, cols, rng)
        expected, bound = _expected(x, raw, ggml_type, cols)
        seg = _load(cuda_ops, raw, ggml_type, cols).segments[0]
        out = cupy.full((num_tokens, rows + 5), np.nan, dtype=np.float32)
        gemv_kquant(seg, quantize_q8_256(cupy.asarray(x)), None, out[:, 2:], out.shape[1], rows_per_warp)
        out = cupy.asnumpy(out)
        assert np.all(np.isnan(out[:, :2])) and np.all(np.isnan(out[:, rows + 2:]))
        actual = out[:, 2:rows + 2]
        assert np.all(np.isfinite(actual))
        assert np.all(np.abs(actual - expected) <= bound), (cols, rows)


@pytest.mark.parametrize("ggml_type", KQUANT_TYPES, ids=lambda t: t.name)
def test_row_result_independent_of_batch_and_rows_per_warp(cuda_ops, ggml_type):
    """Every token count and rows-per-warp instantiation gives a token's row bit for bit."""
    import cupy

    from cupyserve.kernels.cuda.gemv_kquant import gemv_kquant, quantize_q8_256

    rng = np.random.default_rng(int(ggml_type))
    cols, rows = 2816, 77
    seg = _load(cuda_ops, random_weight(ggml_type, rows, cols, rng), ggml_type, cols).segments[0]
    x = cupy.asarray(rng.standard_normal((8, cols), dtype=np.float32))
    alone = cupy.empty((1, rows), dtype=np.float32)
    gemv_kquant(seg, quantize_q8_256(x[3:4]), None, alone, rows, 1)
    for num_tokens in range(4, 9):
        for rows_per_warp in [1, 2, 4]:
            batch = cupy.empty((num_tokens, rows), dtype=np.float32)
            gemv_kquant(seg, quantize_q8_256(x[:num_tokens]), None, batch, rows, rows_per_warp)
            np.testing.assert_array_equal(cupy.asnumpy(batch[3]), cupy.asnumpy(alone[0]))
    through_linear = cuda_ops.linear(x, _load(cuda_ops, cupy.asnumpy(seg.raw), ggml_type, cols))
    np.testing.assert_array_equal(cupy.asnumpy(through_linear[3]), cupy.asnumpy(alone[0]))


@pytest.mark.parametrize("num_tokens", [1, 3, 8])
def test_fused_kquant_segments_with_bias(cuda_ops, num_tokens):
    """q|k|v fused across Q4_K / Q6_K / Q4_K runs (one segment each) plus a bias: each segment's
    rows and bias land in its own columns."""
    import cupy

    rng = np.random.default_rng(num_tokens)
    cols = 768
    types = [T.Q4_K, T.Q6_K, T.Q5_K, T.Q4_K]
    raws = [random_weight(t, r, cols, rng) for t, r in zip(types, [33, 65, 7, 19])]
    bias = rng.standard_normal(sum(r.shape[0] for r in raws), dtype=np.float32)
    x = rng.standard_normal((num_tokens, cols), dtype=np.float32)
    weight = cuda_ops.load_weight(raws, types, cols)
    assert [s.ggml_type for s in weight.segments] == types
    actual = cupy.asnumpy(cuda_ops.linear(cupy.asarray(x), weight, cupy.asarray(bias)))
    parts = [_expected(x, raw, t, cols) for raw, t in zip(raws, types)]
    expected = np.concatenate([p[0] for p in parts], axis=1) + bias
    bound = np.concatenate([p[1] for p in parts], axis=1) + 1e-6 * np.abs(bias)
    assert np.all(np.abs(actual - expected) <= bound)


def test_bad_arguments_are_refused(cuda_ops):
    import cupy

    from cupyserve.kernels.cuda.gemv_kquant import gemv_kquant, quantize_q8_256

    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="256"):
        quantize_q8_256(cupy.zeros((1, 288), dtype=np.float32))
    seg = _load(cuda_ops, random_weight(T.Q4_K, 4, 512, rng), T.Q4_K, 512).segments[0]
    out = cupy.empty((9, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="1..8 tokens"):
        gemv_kquant(seg, quantize_q8_256(cupy.zeros((9, 512), dtype=np.float32)), None, out, 4)
    with pytest.raises(ValueError, match="do not hold"):
        gemv_kquant(seg, quantize_q8_256(cupy.zeros((1, 256), dtype=np.float32)), None, out, 4)
    with pytest.raises(ValueError, match="rows_per_warp"):
        gemv_kquant(seg, quantize_q8_256(cupy.zeros((1, 512), dtype=np.float32)), None, out, 4, 3)
