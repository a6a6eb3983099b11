"""CUDA MoE layer (kernels/cuda/moe.py) vs the float64 layer and vs the NumPy reference op.

Norm: per token, ||out - ref|| / ||ref||, the maximum over tokens (testdata.per_token_rel_error).

- The issue's MXFP4 gate (<= 0.01): ref is the layer computed in float64 from the dequantized
  experts (testdata.moe_float64) with the activations meeting each expert matmul rounded to 8
  bits exactly as ggml rounds them (q8_32 for MXFP4/Q8_0, fp16 for F16); everything after that
  rounding is float64. Measured with the NumPy op (identical arithmetic): ~1e-6.
- Exact math (no activation rounding): ggml's 8-bit activation rounding alone moves these random
  MXFP4/Q8_0 layers by 1.1-1.5 % per token on average and up to 2.9 % (measured with the NumPy
  op on these shapes), so that comparison is bounded at EXACT_MATH (a gross-error check) and
  the +-1 % gate is applied to the rounded computation above.
- The NumPy op (kernels/reference/moe.py): only float32 summation order and expf's last bit differ.

Every cupy.empty output is NaN-poisoned by tests/kernels/conftest.py, so an element a kernel
forgets to write fails the comparison.
"""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from cupyserve.kernels.reference import moe as reference
from cupyserve.kernels.reference.dequant import dequantize
from cupyserve.kernels.reference.linear import activation_rounding

from quant_samples import random_weight
from testdata import moe_float64, per_token_rel_error

pytestmark = pytest.mark.gpu

MXFP4_GATE = 0.01  # vs float64 after ggml's activation rounding (the issue's +-1 %)
EXACT_MATH = 0.05  # vs float64 without activation rounding (measured max 0.029)
# vs the NumPy op: summation order only, except that h (the down matmul's input) is rounded to
# 8-bit codes after a differently ordered sum, so a value on a rounding boundary may take the
# neighbouring code: one such flip moves its token by up to ~2e-3 (measured between float32 and
# float64 h). Most tokens have none, so the median bound stays tight.
VS_REFERENCE_MAX = 5e-3
VS_REFERENCE_MEDIAN = 1e-5


def make_layer(ggml_type, num_experts, hidden, ffn, rng):
    """Random experts as GGUF bytes ([E * out, row_bytes]), their float dequantization, biases."""
    raws, dense = {}, {}
    for name, rows, cols in (("gate", ffn, hidden), ("up", ffn, hidden), ("down", hidden, ffn)):
        raws[name] = random_weight(ggml_type, num_experts * rows, cols, rng)
        dense[name] = dequantize(raws[name], ggml_type, cols).reshape(num_experts, rows, cols)
    biases = {name: (rng.standard_normal((num_experts, width)) * 0.3).astype(np.float32)
              for name, width in (("gate", ffn), ("up", ffn), ("down", hidden))}
    return raws, dense, biases


def make_inputs(dense, num_tokens, num_experts, rng):
    """Activations scaled so gate values are a few units (the clamp at 7 bites sometimes, not
    always), with a few large columns so 8-bit rounding blocks differ in scale."""
    hidden = dense["gate"].shape[2]
    weight_rms = float(np.sqrt(np.mean(dense["gate"][0].astype(np.float64) ** 2)))
    x = rng.standard_normal((num_tokens, hidden)).astype(np.float32)
    x *= np.float32(3.0 / (weight_rms * np.sqrt(hidden)))
    x[:, : hidden // 9] *= np.float32(4.0)
    logits = (rng.standard_normal((num_tokens, num_experts)) * 1.5).astype(np.float32)
    return x, logits


def run_cuda(cuda_ops, raws, dense, biases, ggml_type, x, logits, k):
    import cupy

    num_experts, ffn, hidden = dense["gate"].shape
    loaded = {name: cuda_ops.load_experts(raws[name], ggml_type, num_experts, *dense[name].shape[1:])
              for name in raws}
    assert all(loaded[n].num_bytes == raws[n].nbytes for n in raws)  # resident as blocks, no float copy
    args = [cupy.asarray(x), cupy.asarray(logits)]
    for name in ("gate", "up", "down"):
        args += [loaded[name], cupy.asarray(biases[name])]
    return cupy.asnumpy(cuda_ops.moe_ffn(*args, k))


def run_reference(raws, dense, biases, ggml_type, x, logits, k):
    loaded = {name: reference.load_experts(raws[name], ggml_type, dense[name].shape[0], *dense[name].shape[1:])
              for name in raws}
    return reference.moe_ffn(x, logits, loaded["gate"], biases["gate"], loaded["up"], biases["up"],
                             loaded["down"], biases["down"], k)


def assert_close_to_reference(actual, expected):
    expected = expected.astype(np.float64)
    assert np.all(np.isfinite(actual))
    errors = np.linalg.norm(actual - expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert errors.max() <= VS_REFERENCE_MAX and np.median(errors) <= VS_REFERENCE_MEDIAN


# (num_tokens, hidden, ffn, num_experts, k, type): widths are odd numbers of 32-blocks. MXFP4 and
# Q8_0 take moe_int8.cu at 1 / 7 tokens (a tile per pair) and, with `int8_tiles` "everywhere",
# sorted 8-pair tiles at 64 / 300 tokens; with "auto", the path the tuned limit picks (the grouped
# GEMM at 64 / 300 tokens). F16 and F32 the float GEMV at 1 / 7 and the grouped GEMM at 64 / 300.
SHAPES = [
    (1, 96, 160, 4, 1, T.MXFP4),
    (1, 224, 96, 32, 4, T.MXFP4),
    (7, 96, 160, 4, 4, T.MXFP4),
    (7, 160, 224, 32, 1, T.MXFP4),
    (64, 96, 160, 4, 4, T.MXFP4),
    (64, 224, 96, 32, 4, T.MXFP4),
    (300, 160, 96, 32, 4, T.MXFP4),
    (300, 96, 160, 4, 1, T.MXFP4),
    (7, 96, 160, 4, 2, T.Q8_0),
    (300, 96, 160, 32, 4, T.Q8_0),
    (1, 96, 160, 4, 4, T.F16),
    (64, 96, 160, 32, 4, T.F16),
    (7, 96, 160, 4, 3, T.F32),
    (300, 96, 160, 4, 4, T.F32),
]


@pytest.mark.parametrize("int8_tiles", ["auto", "everywhere"])
@pytest.mark.parametrize("num_tokens,hidden,ffn,num_experts,k,ggml_type", SHAPES,
                         ids=lambda v: v.name if isinstance(v, T) else str(v))
def test_moe_matches_float64_and_reference(cuda_ops, monkeypatch, num_tokens, hidden, ffn, num_experts, k,
                                           ggml_type, int8_tiles):
    from cupyserve.kernels.cuda import moe

    if int8_tiles == "everywhere":
        if ggml_type not in moe.INT8_TYPES:
            pytest.skip("no int8 dot for this type: the same path as auto")
        monkeypatch.setattr(moe, "INT8_MAX_AVERAGE_GROUP", 1 << 30)
        monkeypatch.setattr(moe, "INT8_MAX_AVERAGE_GROUP_MMA", 1 << 30)
    rng = np.random.default_rng([num_tokens, hidden, ffn, num_experts, k, int(ggml_type)])
    raws, dense, biases = make_layer(ggml_type, num_experts, hidden, ffn, rng)
    x, logits = make_inputs(dense, num_tokens, num_experts, rng)
    actual = run_cuda(cuda_ops, raws, dense, biases, ggml_type, x, logits, k)
    assert actual.shape == (num_tokens, hidden) and actual.dtype == np.float32
    rounded = moe_float64(x, logits, dense, biases, k, rounding=activation_rounding(ggml_type))
    assert per_token_rel_error(actual, rounded) <= MXFP4_GATE
    assert per_token_rel_error(actual, moe_float64(x, logits, dense, biases, k)) <= EXACT_MATH
    assert_close_to_reference(actual, run_reference(raws, dense, biases, ggml_type, x, logits, k))


@pytest.fixture(scope="module")
def gpt_oss_20b_layer():
    """One random layer of the real shape, built once (dequantizing it takes seconds)."""
    return make_layer(T.MXFP4, 32, 2880, 2880, np.random.default_rng(20))


@pytest.mark.parametrize("num_tokens", [1, 300])
def test_gpt_oss_20b_layer_shape(cuda_ops, gpt_oss_20b_layer, num_tokens):
    """hidden 2880, ffn 2880, 32 experts, top-4, MXFP4: the real layer's shape."""
    raws, dense, biases = gpt_oss_20b_layer
    x, logits = make_inputs(dense, num_tokens, 32, np.random.default_rng(num_tokens))
    actual = run_cuda(cuda_ops, raws, dense, biases, T.MXFP4, x, logits, 4)
    rounded = moe_float64(x, logits, dense, biases, 4, rounding="q8_32")
    assert per_token_rel_error(actual, rounded) <= MXFP4_GATE
    assert per_token_rel_error(actual, moe_float64(x, logits, dense, biases, 4)) <= EXACT_MATH
    assert_close_to_reference(actual, run_reference(raws, dense, biases, T.MXFP4, x, logits, 4))


@pytest.mark.parametrize("tensor_cores", [False, True], ids=["simt", "mma"])
@pytest.mark.parametrize("num_tokens,num_experts,k", [(64, 4, 4), (64, 32, 4), (300, 8, 2)])
def test_grouped_mxfp4_kernels_match_reference(cuda_ops, monkeypatch, tensor_cores, num_tokens, num_experts, k):
    """Both grouped kernels for MXFP4 (float32 SIMT and exact int8 mma), both row tiles (16, 64),
    with moe_int8.cu switched off so that every shape reaches them."""
    from cupyserve.kernels.cuda import moe

    monkeypatch.setattr(moe, "GROUPED_TENSOR_CORES", tensor_cores)
    monkeypatch.setattr(moe, "INT8_TYPES", frozenset())
    rng = np.random.default_rng([num_tokens, num_experts, k])
    raws, dense, biases = make_layer(T.MXFP4, num_experts, 160, 224, rng)
    x, logits = make_inputs(dense, num_tokens, num_experts, rng)
    actual = run_cuda(cuda_ops, raws, dense, biases, T.MXFP4, x, logits, k)
    assert_close_to_reference(actual, run_reference(raws, dense, biases, T.MXFP4, x, logits, k))


@pytest.mark.parametrize("num_tokens,num_experts,k", [(1, 4, 2), (33, 32, 4), (300, 8, 8)])
def test_routing_matches_reference_with_ties(cuda_ops, num_tokens, num_experts, k):
    import cupy

    from cupyserve.kernels.cuda import moe

    rng = np.random.default_rng(num_experts)
    logits = rng.integers(-2, 3, (num_tokens, num_experts)).astype(np.float32)  # many ties
    logits[0, :3] = -np.inf
    selected, weights = moe.route(cupy.asarray(logits), k)
    expected_ids, expected_weights = reference.route(logits, k)
    np.testing.assert_array_equal(cupy.asnumpy(selected), expected_ids)
    np.testing.assert_allclose(cupy.asnumpy(weights), expected_weights, rtol=1e-6)


@pytest.mark.parametrize("tile_rows", [16, 64])
def test_grouping_is_a_padded_counting_sort(cuda_ops, tile_rows):
    import cupy

    from cupyserve.kernels.cuda import moe

    rng = np.random.default_rng(5)
    num_experts, k = 32, 4
    logits = rng.standard_normal((300, num_experts)).astype(np.float32)
    logits[:, 3] += 4.0  # one crowded expert spanning several tiles; some experts unused
    selected, _ = moe.route(cupy.asarray(logits), k)
    grouping = moe.group_pairs(selected, num_experts, tile_rows)
    tile_expert, sorted_pairs = (cupy.asnumpy(a) for a in grouping)
    flat = cupy.asnumpy(selected).reshape(-1)
    assert sorted(p for p in sorted_pairs if p >= 0) == list(range(flat.size))  # each pair once
    tiles = sorted_pairs.reshape(-1, tile_rows)
    for tile, expert in zip(tiles, tile_expert):
        pairs = tile[tile >= 0]
        if expert < 0:
            assert pairs.size == 0
        else:
            assert pairs.size > 0 and np.all(flat[pairs] == expert)
    used = tile_expert[tile_expert >= 0]
    assert np.all(np.diff(used) >= 0)  # groups in expert order
    counts = np.bincount(flat, minlength=num_experts)
    assert np.array_equal(np.bincount(used, minlength=num_experts), -(-counts // tile_rows))


def test_paths_agree_and_rows_are_batch_invariant(cuda_ops, monkeypatch):
    """The float GEMV, the grouped GEMM and both tilings of moe_int8.cu give the same layer; within
    each path a row's output does not depend on the other rows of the batch (bit-identical alone
    and in a batch of 40); the two int8 tilings sum in the same order, so they agree bit for bit."""
    from cupyserve.kernels.cuda import moe

    rng = np.random.default_rng(11)
    raws, dense, biases = make_layer(T.MXFP4, 8, 160, 96, rng)
    x, logits = make_inputs(dense, 40, 8, rng)
    outputs = {}
    int8_types = moe.INT8_TYPES
    for name, gemv_max, is_int8 in (("gemv", 10**6, False), ("grouped", 0, False),
                                    ("int8 per pair", 10**6, True), ("int8 sorted", 0, True)):
        monkeypatch.setattr(moe, "GEMV_MAX_TOKENS", gemv_max)
        monkeypatch.setattr(moe, "INT8_TYPES", int8_types if is_int8 else frozenset())
        monkeypatch.setattr(moe, "INT8_MAX_AVERAGE_GROUP", 1 << 30)  # sorted tiles at 40 tokens too
        monkeypatch.setattr(moe, "INT8_MAX_AVERAGE_GROUP_MMA", 1 << 30)
        batch = run_cuda(cuda_ops, raws, dense, biases, T.MXFP4, x, logits, 3)
        for row in (0, 17, 39):
            alone = run_cuda(cuda_ops, raws, dense, biases, T.MXFP4, x[row:row + 1], logits[row:row + 1], 3)
            np.testing.assert_array_equal(batch[row], alone[0])
        outputs[name] = batch
    assert_close_to_reference(outputs["grouped"], outputs["gemv"])  # summation order only
    assert_close_to_reference(outputs["int8 per pair"], outputs["gemv"])
    np.testing.assert_array_equal(outputs["int8 sorted"], outputs["int8 per pair"])


def test_mma_rows_do_not_depend_on_the_tile_size(cuda_ops, monkeypatch):
    """The int8 mma kernel sums each output in the same order whatever the tile (16 or 64 rows)
    and the other rows of the tile: the two tile sizes agree bit for bit, over a width that is
    not a multiple of the CTA's 64 columns nor of its 4-block groups (hidden 160: 5 blocks)."""
    from cupyserve.kernels.cuda import moe

    monkeypatch.setattr(moe, "INT8_TYPES", frozenset())
    rng = np.random.default_rng(5)
    raws, dense, biases = make_layer(T.MXFP4, 4, 160, 224, rng)
    x, logits = make_inputs(dense, 90, 4, rng)
    outputs = []
    for tile_rows in (moe.SMALL_TILE_ROWS, moe.LARGE_TILE_ROWS):
        monkeypatch.setattr(moe, "tile_rows_for", lambda num_pairs, num_experts, rows=tile_rows: rows)
        outputs.append(run_cuda(cuda_ops, raws, dense, biases, T.MXFP4, x, logits, 3))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert_close_to_reference(outputs[0], run_reference(raws, dense, biases, T.MXFP4, x, logits, 3))


@pytest.mark.parametrize("num_tokens", [4, 100])
def test_moe_ffn_captures_in_a_cuda_graph(cuda_ops, num_tokens):
    """No host synchronization and no data-dependent host shapes: stream capture would fail on a
    device-to-host copy, and the replayed graph must reproduce the eager result."""
    import cupy

    rng = np.random.default_rng(num_tokens)
    raws, dense, biases = make_layer(T.MXFP4, 32, 96, 160, rng)
    x, logits = make_inputs(dense, num_tokens, 32, rng)
    loaded = {n: cuda_ops.load_experts(raws[n], T.MXFP4, 32, *dense[n].shape[1:]) for n in raws}
    args = [cupy.asarray(x), cupy.asarray(logits)]
    for name in ("gate", "up", "down"):
        args += [loaded[name], cupy.asarray(biases[name])]
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        eager = cupy.asnumpy(cuda_ops.moe_ffn(*args, 4))  # compiles kernels, warms the memory pool
        cuda_ops.moe_ffn(*args, 4)
        stream.synchronize()
        stream.begin_capture()
        captured = cuda_ops.moe_ffn(*args, 4)
        graph = stream.end_capture()
        captured.fill(np.nan)  # only the replay below may write the result
        graph.launch()
        stream.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(captured), eager)


def test_bad_arguments_raise(cuda_ops):
    import cupy

    rng = np.random.default_rng(2)
    raws, dense, biases = make_layer(T.MXFP4, 4, 96, 160, rng)
    with pytest.raises(ValueError, match="bytes"):
        cuda_ops.load_experts(raws["gate"][:-1], T.MXFP4, 4, 160, 96)
    loaded = {n: cuda_ops.load_experts(raws[n], T.MXFP4, 4, *dense[n].shape[1:]) for n in raws}
    x = cupy.zeros((3, 96), dtype=np.float32)
    with pytest.raises(ValueError, match="num_experts_used"):
        cuda_ops.moe_ffn(x, cupy.zeros((3, 4), np.float32), loaded["gate"], None, loaded["up"], None,
                         loaded["down"], None, 5)
    with pytest.raises(ValueError, match="router_logits"):
        cuda_ops.moe_ffn(x, cupy.zeros((3, 5), np.float32), loaded["gate"], None, loaded["up"], None,
                         loaded["down"], None, 2)
