"""The NumPy MoE op (kernels/reference/moe.py) against a float64 computation written out here from
the dequantized experts: routing (top-k, ties to the lower index), softmax over the k chosen
logits, gpt-oss's clamped SwiGLU, biases, and the weighted sum."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from cupyserve.kernels.reference import moe
from cupyserve.kernels.reference.dequant import dequantize
from cupyserve.kernels.reference.linear import activation_rounding

from testdata import moe_float64, per_token_rel_error as per_token_error

ALPHA, LIMIT = 1.702, 7.0
HIDDEN, FFN = 96, 160  # odd numbers of 32-blocks (3 and 5)


def random_experts(ggml_type: T, num_experts: int, rows: int, cols: int, rng) -> np.ndarray:
    """GGUF bytes of a random [num_experts, rows, cols] tensor with sane magnitudes."""
    if ggml_type == T.F32:
        return (rng.standard_normal((num_experts, rows, cols)) * 0.3).astype(np.float32)
    num_blocks = num_experts * rows * cols // 32
    if ggml_type == T.Q8_0:
        blocks = np.empty((num_blocks, 34), dtype=np.uint8)
        scales = rng.uniform(0.001, 0.005, num_blocks).astype(np.float16)
        blocks[:, :2] = scales.view(np.uint8).reshape(-1, 2)
        blocks[:, 2:] = rng.integers(-127, 128, (num_blocks, 32), dtype=np.int8).view(np.uint8)
    elif ggml_type == T.MXFP4:
        blocks = rng.integers(0, 256, (num_blocks, 17), dtype=np.uint8)
        blocks[:, 0] = rng.integers(121, 126, num_blocks, dtype=np.uint8)  # scales 2^-6 .. 2^-2
    else:
        raise AssertionError(ggml_type)
    return blocks.reshape(num_experts, rows, -1)


def dequantized(raw: np.ndarray, ggml_type: T, num_experts: int, cols: int) -> np.ndarray:
    return dequantize(raw.reshape(-1).view(np.uint8), ggml_type, cols).reshape(num_experts, -1, cols)


def float64_moe(x, logits, dense, biases, k, ggml_type, limit=LIMIT):
    """float64 with the reference's activation rounding for this weight type applied to each
    expert matmul's input (testdata.moe_float64)."""
    return moe_float64(x, logits, dense, biases, k, rounding=activation_rounding(ggml_type),
                       alpha=ALPHA, limit=limit)


def make_layer(ggml_type, num_experts, rng, with_bias=True):
    raws = {name: random_experts(ggml_type, num_experts, rows, cols, rng)
            for name, rows, cols in (("gate", FFN, HIDDEN), ("up", FFN, HIDDEN), ("down", HIDDEN, FFN))}
    dense = {name: dequantized(raw, ggml_type, num_experts, raw_cols)
             for (name, raw), raw_cols in zip(raws.items(), (HIDDEN, HIDDEN, FFN))}
    loaded = {name: moe.load_experts(raw, ggml_type, num_experts, dense[name].shape[1], dense[name].shape[2])
              for name, raw in raws.items()}
    biases = {name: (rng.standard_normal((num_experts, width)) * 0.5).astype(np.float32) if with_bias else None
              for name, width in (("gate", FFN), ("up", FFN), ("down", HIDDEN))}
    return loaded, dense, biases


def run_both(x, logits, k, ggml_type, loaded, dense, biases, **kwargs):
    actual = moe.moe_ffn(x, logits, loaded["gate"], biases["gate"], loaded["up"], biases["up"],
                         loaded["down"], biases["down"], k, ALPHA, LIMIT, **kwargs)
    expected = float64_moe(x, logits, dense, biases, k, ggml_type)
    return actual, expected


@pytest.mark.parametrize("ggml_type", [T.F32, T.Q8_0, T.MXFP4], ids=lambda t: t.name)
@pytest.mark.parametrize("num_experts_used", [1, 2, 3, 4])
def test_moe_matches_float64(ggml_type, num_experts_used):
    rng = np.random.default_rng([int(ggml_type), num_experts_used])
    num_experts = 6
    loaded, dense, biases = make_layer(ggml_type, num_experts, rng)
    x = rng.standard_normal((9, HIDDEN)).astype(np.float32)
    x[:, :20] *= 4.0  # uneven block magnitudes, so 8-bit rounding is not trivially exact
    logits = (rng.standard_normal((9, num_experts)) * 2).astype(np.float32)
    actual, expected = run_both(x, logits, num_experts_used, ggml_type, loaded, dense, biases)
    assert actual.dtype == np.float32 and actual.shape == (9, HIDDEN)
    assert loaded["gate"].num_bytes == loaded["gate"].raw.nbytes  # kept as blocks
    assert per_token_error(actual, expected) < 1e-5
    # The clamp is exercised: without it the float64 answer moves far beyond the tolerance.
    unclamped = float64_moe(x, logits, dense, biases, num_experts_used, ggml_type, limit=np.inf)
    assert per_token_error(actual, unclamped) > 1e-2


@pytest.mark.parametrize("ggml_type", [T.Q8_0, T.MXFP4], ids=lambda t: t.name)
def test_ties_choose_lower_index_and_no_bias(ggml_type):
    rng = np.random.default_rng(7)
    num_experts = 5
    loaded, dense, biases = make_layer(ggml_type, num_experts, rng, with_bias=False)
    x = rng.standard_normal((12, HIDDEN)).astype(np.float32)
    logits = rng.integers(0, 3, (12, num_experts)).astype(np.float32)  # many equal logits
    logits[0] = [1, 2, 2, 0, 2]
    for k in (1, 2, 4):
        actual, expected = run_both(x, logits, k, ggml_type, loaded, dense, biases)
        assert per_token_error(actual, expected) < 1e-5
    selected, weights = moe.route(logits[:1], 2)
    assert selected.tolist() == [[1, 2]]
    np.testing.assert_allclose(weights, [[0.5, 0.5]])
    # Picking the higher-index expert of a tie gives another answer: the tie rule is observable.
    swapped = logits.copy()
    swapped[0] = [1, 2, 2, 0, 2.0001]
    other, _ = run_both(x[:1], swapped[:1], 2, ggml_type, loaded, dense, biases)
    first, _ = run_both(x[:1], logits[:1], 2, ggml_type, loaded, dense, biases)
    assert per_token_error(other, first.astype(np.float64)) > 1e-2


def test_softmax_weights_over_chosen_logits_only():
    logits = np.array([[3.0, 1.0, 2.0, -50.0], [0.0, 0.0, 0.0, 10.0]], dtype=np.float32)
    selected, weights = moe.route(logits, 2)
    assert selected.tolist() == [[0, 2], [3, 0]]
    expected = np.exp([[0.0, -1.0], [0.0, -10.0]])
    np.testing.assert_allclose(weights, expected / expected.sum(axis=1, keepdims=True), rtol=1e-6)


def test_generated_rows_are_batch_invariant():
    """A generated row gives bit-identical output alone or inside a batch (the linear contract)."""
    rng = np.random.default_rng(3)
    loaded, _, biases = make_layer(T.MXFP4, 4, rng)
    x = rng.standard_normal((10, HIDDEN)).astype(np.float32)
    logits = rng.standard_normal((10, 4)).astype(np.float32)
    mask = np.zeros(10, dtype=bool)
    mask[[2, 5, 9]] = True
    args = (loaded["gate"], biases["gate"], loaded["up"], biases["up"], loaded["down"], biases["down"], 2)
    batch = moe.moe_ffn(x, logits, *args, generated_rows=mask)
    for row in (2, 5, 9):
        alone = moe.moe_ffn(x[row:row + 1], logits[row:row + 1], *args, generated_rows=np.ones(1, bool))
        np.testing.assert_array_equal(batch[row], alone[0])


def test_bad_shapes_raise_clear_errors():
    rng = np.random.default_rng(0)
    loaded, _, biases = make_layer(T.Q8_0, 4, rng)
    x = np.zeros((2, HIDDEN), np.float32)
    logits = np.zeros((2, 4), np.float32)
    args = [loaded["gate"], biases["gate"], loaded["up"], biases["up"], loaded["down"], biases["down"]]
    with pytest.raises(ValueError, match="num_experts_used"):
        moe.moe_ffn(x, logits, *args, 5)
    with pytest.raises(ValueError, match="router_logits"):
        moe.moe_ffn(x, logits[:, :3], *args, 2)
    with pytest.raises(ValueError, match="down experts"):
        moe.moe_ffn(x, logits, *args[:4], loaded["up"], biases["down"], 2)
    with pytest.raises(ValueError, match="up_bias"):
        moe.moe_ffn(x, logits, *args[:3], biases["up"][:, :7], *args[4:], 2)
    with pytest.raises(ValueError, match="expected 4 x 160"):
        moe.load_experts(np.zeros(100, np.uint8), T.MXFP4, 4, FFN, HIDDEN)
    with pytest.raises(ValueError, match="multiple"):
        moe.load_experts(np.zeros(4 * 17, np.uint8), T.MXFP4, 1, 4, 40)
