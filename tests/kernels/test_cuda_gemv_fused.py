"""The int8 GEMV that rounds its own float input (gemv_int8_fused): one launch instead of
quantize_q8_32 + gemv_int8 (plain activations) or gated_activation + gemv_int8 (a GatedInput from
swiglu / geglu), bit-identical to that two-launch path and within the GEMV tolerance of the NumPy
reference; the size rule (linear.fuses_input_rounding) keeps the two launches for large inputs.
Outputs start as NaN (conftest), so a row or column a kernel skips fails."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from cupyserve.kernels.reference import linear as reference

from quant_samples import outlier_activations, random_weight, rel_error

pytestmark = pytest.mark.gpu

INT8_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
GEMV_TOLERANCE = 2e-5  # as test_cuda_linear: same codes, only the float32 summation order differs


def _two_launch(cuda_ops, x_d, weight, bias_d):
    """quantize_q8_32, then gemv_int8 on its codes (what linear ran before the fused kernel)."""
    import cupy

    from cupyserve.kernels.cuda.linear import quantize_q8_32
    from cupyserve.kernels.cuda.q8_activations import Q8Activations

    codes, scales = quantize_q8_32(x_d)
    return cupy.asnumpy(cuda_ops.linear(Q8Activations(x_d, codes, scales), weight, bias_d))


@pytest.mark.parametrize("ggml_type", INT8_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("num_tokens,cols,rows", [(1, 576, 576), (1, 32, 7), (2, 1536, 129), (3, 96, 1000),
                                                  (5, 1024, 37), (8, 1024, 64), (9, 576, 65), (16, 512, 300),
                                                  (1, 8192, 40)])
def test_float_input_rounded_in_the_gemv_launch(cuda_ops, launches, monkeypatch, ggml_type, num_tokens, cols, rows):
    """Odd row counts leave CTAs with row-less warps (they still round, then exit); 9 and 16
    tokens run as two tiles; 8192 values is the largest tile the size rule fuses (with the
    per-CTA float limit, a speed choice, lifted so that the kernel is tested at every size)."""
    import cupy

    from cupyserve.kernels.cuda import linear

    monkeypatch.setattr(linear, "FUSED_INPUT_MAX_FLOATS_PER_CTA", 1 << 20)

    rng = np.random.default_rng([int(ggml_type), num_tokens, cols, rows])
    raw = random_weight(ggml_type, rows, cols, rng)
    x = outlier_activations(rng, num_tokens, cols)
    bias = rng.standard_normal(rows, dtype=np.float32)
    weight = cuda_ops.load_weight([raw], [ggml_type], cols)
    x_d, bias_d = cupy.asarray(x), cupy.asarray(bias)
    assert linear.fuses_input_rounding(weight, num_tokens)
    launches.clear()
    fused = cupy.asnumpy(cuda_ops.linear(x_d, weight, bias_d))
    tiles = -(-num_tokens // linear.GEMV_TILE_TOKENS)
    assert launches == {"gemv_int8_fused": tiles}
    np.testing.assert_array_equal(fused, _two_launch(cuda_ops, x_d, weight, bias_d))
    expected = reference.linear(x, reference.load_weight([raw], [ggml_type], cols), bias)
    assert rel_error(fused, expected) < GEMV_TOLERANCE


def test_fused_segments_each_round_the_input(cuda_ops, launches, monkeypatch):
    """q|k|v fused across Q4_1 / Q8_0 / Q4_0 segments: one fused launch per segment."""
    import cupy

    from cupyserve.kernels.cuda import linear

    monkeypatch.setattr(linear, "FUSED_INPUT_MAX_FLOATS_PER_CTA", 1 << 20)  # 3 x 576 floats

    rng = np.random.default_rng(21)
    cols, types = 576, [T.Q4_1, T.Q4_1, T.Q8_0, T.Q4_0]
    raws = [random_weight(t, r, cols, rng) for t, r in zip(types, [64, 33, 65, 7])]
    bias = rng.standard_normal(sum(r.shape[0] for r in raws), dtype=np.float32)
    x = outlier_activations(rng, 3, cols)
    weight = cuda_ops.load_weight(raws, types, cols)
    x_d, bias_d = cupy.asarray(x), cupy.asarray(bias)
    launches.clear()
    fused = cupy.asnumpy(cuda_ops.linear(x_d, weight, bias_d))
    assert launches == {"gemv_int8_fused": len(weight.segments)}
    np.testing.assert_array_equal(fused, _two_launch(cuda_ops, x_d, weight, bias_d))
    expected = reference.linear(x, reference.load_weight(raws, types, cols), bias)
    assert rel_error(fused, expected) < GEMV_TOLERANCE


@pytest.mark.parametrize("case", ["tile_values", "cta_floats", "grid_reads", "float_segment", "codes_given"])
def test_two_launches_past_the_size_rule(cuda_ops, launches, monkeypatch, case):
    """Inputs past FUSED_INPUT_MAX_VALUES a tile (2 x 8192), FUSED_INPUT_MAX_FLOATS_PER_CTA (2 x
    576) or FUSED_INPUT_MAX_READ_BYTES over the grid (2048 CTAs x 1024 floats) keep quantize_q8_32
    + gemv_int8, with the same bits as the fused launch (forced here by raising the limits); so do
    weights with a float-dot segment (MXFP4 here) and inputs whose producer already made the codes."""
    import cupy

    from cupyserve.kernels.cuda import linear

    rng = np.random.default_rng(31)
    num_tokens, rows, cols = {"tile_values": (2, 40, 8192), "grid_reads": (1, 8192, 1024)}.get(case, (2, 50, 576))
    types = [T.Q4_1, T.MXFP4] if case == "float_segment" else [T.Q4_1]
    if not cuda_ops.can_fuse(types):
        pytest.skip("Q4_1 and MXFP4 do not fuse")
    raws = [random_weight(t, rows, cols, rng) for t in types]
    weight = cuda_ops.load_weight(raws, types, cols)
    x = outlier_activations(rng, num_tokens, cols)
    x_d = cupy.asarray(x)
    assert not linear.fuses_input_rounding(weight, num_tokens) or case == "codes_given"
    launches.clear()
    if case == "codes_given":
        two = _two_launch(cuda_ops, x_d, weight, None)
    else:
        two = cupy.asnumpy(cuda_ops.linear(x_d, weight))
    assert launches["quantize_q8_32"] == 1 and launches["gemv_int8"] == 1 and launches["gemv_int8_fused"] == 0
    expected = reference.linear(x, reference.load_weight(raws, types, cols))
    assert rel_error(two, expected) < GEMV_TOLERANCE
    if case in ("tile_values", "cta_floats", "grid_reads"):
        monkeypatch.setattr(linear, "FUSED_INPUT_MAX_VALUES", 1 << 20)
        monkeypatch.setattr(linear, "FUSED_INPUT_MAX_FLOATS_PER_CTA", 1 << 20)
        monkeypatch.setattr(linear, "FUSED_INPUT_MAX_READ_BYTES", 1 << 40)
        assert linear.fuses_input_rounding(weight, num_tokens)
        np.testing.assert_array_equal(cupy.asnumpy(cuda_ops.linear(x_d, weight)), two)


# NumPy's exp / tanh and CUDA's expf / tanhf may differ in the last bit (test_cuda_elementwise:
# < 2e-6), and a last-bit change can move a value across a q8 rounding boundary: one code step is
# 1/127 of its block's maximum. So against NumPy's own activation the tolerance is the one-rounding
# kind (as the cuBLAS path's); against CUDA's activation floats it is the GEMV's.
GATED_REFERENCE_TOLERANCE = 2e-3


@pytest.mark.parametrize("activation", ["swiglu", "geglu"])
@pytest.mark.parametrize("ggml_type", INT8_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("num_tokens,ffn,rows", [(1, 1536, 576), (2, 32, 7), (1, 4096, 129), (3, 96, 1000),
                                                 (9, 256, 40)])
def test_gated_input_applied_in_the_down_gemv(cuda_ops, launches, monkeypatch, activation, ggml_type,
                                              num_tokens, ffn, rows):
    """swiglu / geglu with quantize_for = the down weight launch nothing (a GatedInput) and the
    down GEMV applies the activation: one launch a tile, bit-identical to the activation launch
    with codes + gemv_int8 (the path past the size rule)."""
    import cupy

    from cupyserve.kernels.cuda import linear
    from cupyserve.kernels.cuda.gated_input import GatedInput
    from cupyserve.kernels.cuda.q8_activations import Q8Activations
    from cupyserve.kernels.reference import activation as reference_activation

    monkeypatch.setattr(linear, "FUSED_INPUT_MAX_FLOATS_PER_CTA", 1 << 20)  # the kernel at every size
    rng = np.random.default_rng([int(ggml_type), num_tokens, ffn, rows])
    raw = random_weight(ggml_type, rows, ffn, rng)
    gate_up = outlier_activations(rng, num_tokens, 2 * ffn)
    bias = rng.standard_normal(rows, dtype=np.float32)
    weight = cuda_ops.load_weight([raw], [ggml_type], ffn)
    gate_up_d, bias_d = cupy.asarray(gate_up), cupy.asarray(bias)
    op = getattr(cuda_ops, activation)
    launches.clear()
    gated = op(gate_up_d, quantize_for=weight)
    assert isinstance(gated, GatedInput) and gated.shape == (num_tokens, ffn)
    fused = cupy.asnumpy(cuda_ops.linear(gated, weight, bias_d))
    assert launches == {"gemv_int8_fused": -(-num_tokens // linear.GEMV_TILE_TOKENS)}

    monkeypatch.setattr(linear, "FUSED_INPUT_MAX_VALUES", 0)  # the two-launch path
    with_codes = op(gate_up_d, quantize_for=weight)
    assert isinstance(with_codes, Q8Activations)
    launches.clear()
    np.testing.assert_array_equal(fused, cupy.asnumpy(cuda_ops.linear(with_codes, weight, bias_d)))
    assert launches == {"gemv_int8": -(-num_tokens // linear.GEMV_TILE_TOKENS)}

    reference_weight = reference.load_weight([raw], [ggml_type], ffn)
    activated = cupy.asnumpy(op(gate_up_d))
    assert rel_error(fused, reference.linear(activated, reference_weight, bias)) < GEMV_TOLERANCE
    expected = reference.linear(getattr(reference_activation, activation)(gate_up), reference_weight, bias)
    assert rel_error(fused, expected) < GATED_REFERENCE_TOLERANCE


@pytest.mark.parametrize("case", ["batch", "width", "weight_type", "no_weight"])
def test_gated_activation_launched_where_the_gemv_cannot_apply_it(cuda_ops, case):
    """Past the GEMV limit, for a weight of another width, a weight without an int8 dot, or none:
    the activation runs as before (Q8Activations or plain floats), never a GatedInput."""
    import cupy

    from cupyserve.kernels.cuda import linear
    from cupyserve.kernels.cuda.gated_input import GatedInput

    rng = np.random.default_rng(41)
    num_tokens = linear.GEMV_MAX_TOKENS + 1 if case == "batch" else 1
    ffn = 256
    weight_type = T.Q4_K if case == "weight_type" else T.Q4_1
    weight_cols = 2 * ffn if case == "width" else ffn
    weight = (None if case == "no_weight" else
              cuda_ops.load_weight([random_weight(weight_type, 16, weight_cols, rng)], [weight_type], weight_cols))
    gate_up = cupy.asarray(outlier_activations(rng, num_tokens, 2 * ffn))
    result = cuda_ops.swiglu(gate_up, quantize_for=weight)
    assert not isinstance(result, GatedInput)
    values = result if isinstance(result, cupy.ndarray) else result.values
    np.testing.assert_array_equal(cupy.asnumpy(values), cupy.asnumpy(cuda_ops.swiglu(gate_up)))


def test_linear_refuses_a_gated_input_for_another_weight(cuda_ops):
    import cupy

    from cupyserve.kernels.cuda.gated_input import GatedInput

    rng = np.random.default_rng(42)
    weight = cuda_ops.load_weight([random_weight(T.Q4_1, 8, 64, rng)], [T.Q4_1], 64)
    gated = GatedInput(cupy.asarray(outlier_activations(rng, 1, 2 * 96)), "swiglu")
    with pytest.raises(ValueError, match="GatedInput"):
        cuda_ops.linear(gated, weight)
