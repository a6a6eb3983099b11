"""The q8_32 activation codes emitted by RMSNorm / SwiGLU / GeGLU for the next int8 GEMV: the
same floats as the plain op, the same codes and scales as `quantize_q8_32` (and as NumPy's
rounding of those floats) bit for bit, and the same GEMV result; other cases stay plain arrays.
Outputs start as NaN / 0x7f bytes (conftest), so an element a kernel skips fails."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from quant_samples import outlier_activations, random_weight

pytestmark = pytest.mark.gpu


def _numpy_q8_32(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8, scales float32) exactly as kernels/reference/linear.round_activations rounds."""
    num_tokens, num_cols = values.shape
    blocks = values.reshape(num_tokens, num_cols // 32, 32)
    scale = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127.0)
    inv = np.divide(np.float32(1.0), scale, out=np.zeros_like(scale), where=scale > 0)
    codes = np.rint(blocks * inv).astype(np.int8).reshape(num_tokens, num_cols)
    return codes, scale[..., 0].astype(np.float16).astype(np.float32)


def _weight(cuda_ops, ggml_type, rows, cols, seed):
    rng = np.random.default_rng(seed)
    return cuda_ops.load_weight([random_weight(ggml_type, rows, cols, rng)], [ggml_type], cols)


def _assert_carries_exact_codes(fused, plain):
    import cupy

    from cupyserve.kernels.cuda.linear import quantize_q8_32
    from cupyserve.kernels.cuda.q8_activations import Q8Activations

    assert isinstance(fused, Q8Activations)
    values = cupy.asnumpy(fused.values)
    np.testing.assert_array_equal(values, cupy.asnumpy(plain))
    codes, scales = quantize_q8_32(plain)
    np.testing.assert_array_equal(cupy.asnumpy(fused.codes), cupy.asnumpy(codes))
    np.testing.assert_array_equal(cupy.asnumpy(fused.scales), cupy.asnumpy(scales))
    ref_codes, ref_scales = _numpy_q8_32(values)
    np.testing.assert_array_equal(cupy.asnumpy(fused.codes), ref_codes)
    np.testing.assert_array_equal(cupy.asnumpy(fused.scales), ref_scales)


@pytest.mark.parametrize("ggml_type", [T.Q4_1, T.Q8_0, T.Q4_0, T.Q5_0, T.Q5_1], ids=lambda t: t.name)
@pytest.mark.parametrize("num_tokens,hidden", [(1, 576), (2, 64), (3, 960), (5, 32), (8, 4096), (7, 5024),
                                               (2, 1056), (1, 16384)])
def test_rms_norms_emit_exact_codes(cuda_ops, ggml_type, num_tokens, hidden):
    import cupy

    rng = np.random.default_rng([num_tokens, hidden, int(ggml_type)])
    x, residual = outlier_activations(rng, num_tokens, hidden), outlier_activations(rng, num_tokens, hidden)
    norm_weight = cupy.asarray(rng.standard_normal(hidden, dtype=np.float32))
    weight = _weight(cuda_ops, ggml_type, 37, hidden, hidden)
    x_d, residual_d = cupy.asarray(x), cupy.asarray(residual)

    fused = cuda_ops.rms_norm(x_d, norm_weight, 1e-5, quantize_for=weight)
    plain = cuda_ops.rms_norm(x_d, norm_weight, 1e-5)
    _assert_carries_exact_codes(fused, plain)
    np.testing.assert_array_equal(cupy.asnumpy(cuda_ops.linear(fused, weight)),
                                  cupy.asnumpy(cuda_ops.linear(plain, weight)))

    fused, fused_sum = cuda_ops.add_rms_norm(x_d, residual_d, norm_weight, 1e-6, quantize_for=weight)
    plain, plain_sum = cuda_ops.add_rms_norm(x_d, residual_d, norm_weight, 1e-6)
    _assert_carries_exact_codes(fused, plain)
    np.testing.assert_array_equal(cupy.asnumpy(fused_sum), cupy.asnumpy(plain_sum))
    np.testing.assert_array_equal(cupy.asnumpy(cuda_ops.linear(fused, weight)),
                                  cupy.asnumpy(cuda_ops.linear(plain, weight)))


@pytest.mark.parametrize("activation", ["swiglu", "geglu"])
@pytest.mark.parametrize("num_tokens,ffn", [(1, 1536), (2, 32), (3, 2464), (8, 8192), (6, 96)])
def test_gated_activations_emit_exact_codes(cuda_ops, monkeypatch, activation, num_tokens, ffn):
    """Batches whose down GEMV cannot apply the activation itself (here all, by a size rule of 0;
    test_cuda_gemv_fused covers the GatedInput path) get the activation launch with codes."""
    import cupy

    from cupyserve.kernels.cuda import linear

    monkeypatch.setattr(linear, "FUSED_INPUT_MAX_VALUES", 0)
    rng = np.random.default_rng([num_tokens, ffn])
    gate_up = cupy.asarray(outlier_activations(rng, num_tokens, 2 * ffn))
    weight = _weight(cuda_ops, T.Q4_1, 29, ffn, ffn)
    op = getattr(cuda_ops, activation)
    fused, plain = op(gate_up, quantize_for=weight), op(gate_up)
    _assert_carries_exact_codes(fused, plain)
    np.testing.assert_array_equal(cupy.asnumpy(cuda_ops.linear(fused, weight, cupy.ones(29, np.float32))),
                                  cupy.asnumpy(cuda_ops.linear(plain, weight, cupy.ones(29, np.float32))))


def test_mixed_segments_use_codes_and_floats(cuda_ops):
    """A fused Q4_1 | MXFP4 weight (q8_32 rounding both): the int8 segment reads the handed-over
    codes, the float segment rounds the values itself; both as with a plain input."""
    import cupy

    rng = np.random.default_rng(11)
    cols = 576
    types = [T.Q4_1, T.MXFP4]
    if not cuda_ops.can_fuse(types):
        pytest.skip("Q4_1 and MXFP4 do not fuse")
    weight = cuda_ops.load_weight([random_weight(t, 40, cols, rng) for t in types], types, cols)
    x = cupy.asarray(outlier_activations(rng, 4, cols))
    norm_weight = cupy.asarray(rng.standard_normal(cols, dtype=np.float32))
    fused = cuda_ops.rms_norm(x, norm_weight, 1e-5, quantize_for=weight)
    plain = cuda_ops.rms_norm(x, norm_weight, 1e-5)
    _assert_carries_exact_codes(fused, plain)
    np.testing.assert_array_equal(cupy.asnumpy(cuda_ops.linear(fused, weight)),
                                  cupy.asnumpy(cuda_ops.linear(plain, weight)))


def test_raised_gemv_limit_tiles_the_codes(cuda_ops, monkeypatch):
    """With GEMV_MAX_TOKENS raised, 20 tokens run as GEMV tiles of 8: each tile reads its own rows'
    codes (a wrong slice would change the result)."""
    import cupy

    from cupyserve.kernels.cuda import linear

    monkeypatch.setattr(linear, "GEMV_MAX_TOKENS", 64)
    rng = np.random.default_rng(12)
    weight = _weight(cuda_ops, T.Q4_1, 50, 320, 5)
    x = cupy.asarray(outlier_activations(rng, 20, 320))
    norm_weight = cupy.asarray(rng.standard_normal(320, dtype=np.float32))
    fused = cuda_ops.rms_norm(x, norm_weight, 1e-5, quantize_for=weight)
    plain = cuda_ops.rms_norm(x, norm_weight, 1e-5)
    _assert_carries_exact_codes(fused, plain)
    np.testing.assert_array_equal(cupy.asnumpy(cuda_ops.linear(fused, weight)),
                                  cupy.asnumpy(cuda_ops.linear(plain, weight)))


@pytest.mark.parametrize("case", ["prefill_batch", "kquant_weight", "float_weight", "no_weight", "odd_width"])
def test_plain_array_where_no_int8_gemv_follows(cuda_ops, case):
    """Only decode-sized batches feeding an int8 GEMV get codes; the rest is the plain op."""
    import cupy

    from cupyserve.kernels.cuda import linear

    # One token past the GEMV limit of a Q4_1 weight: the dequantize + cuBLAS path takes no codes.
    num_tokens, hidden = (linear.GEMV_MAX_TOKENS + 1, 512) if case == "prefill_batch" else (2, 512)
    if case == "odd_width":
        hidden = 48  # not whole 32-blocks (and not the weight's width: linear would refuse it)
    weight = {"kquant_weight": lambda: _weight(cuda_ops, T.Q4_K, 16, 512, 1),
              "float_weight": lambda: _weight(cuda_ops, T.F16, 16, 512, 2),
              "no_weight": lambda: None}.get(
        case, lambda: _weight(cuda_ops, T.Q4_1, 16, 512, 4))()
    rng = np.random.default_rng(13)
    x = cupy.asarray(outlier_activations(rng, num_tokens, hidden))
    norm_weight = cupy.asarray(rng.standard_normal(hidden, dtype=np.float32))
    result = cuda_ops.rms_norm(x, norm_weight, 1e-5, quantize_for=weight)
    assert isinstance(result, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(result), cupy.asnumpy(cuda_ops.rms_norm(x, norm_weight, 1e-5)))
    gated = cuda_ops.swiglu(cupy.concatenate([x, x], axis=1), quantize_for=weight)
    assert isinstance(gated, cupy.ndarray)


def test_decode_step_launches_no_standalone_quantize_before_fused_gemvs(cuda_ops, launches):
    """A batch-1 decode step of the real model: the qkv, gate_up and output GEMVs read codes from
    their producers, the o GEMV rounds the attention output and the down GEMV applies SwiGLU in
    their own launches (gemv_int8_fused): for SmolLM2 no quantize_q8_32 and no gated_activation
    launch at all; and rope + KV write is one launch per layer."""
    from cupyserve.runtime.gguf_loader import GGUFFile
    from test_cuda_model import _Backend, _model_path

    from cupyserve.kernels.cuda.linear import fuses_input_rounding, takes_q8_codes

    backend = _Backend(cuda_ops, GGUFFile.open(_model_path()), 2, 1)
    num_layers = backend.model.config.num_layers
    if not takes_q8_codes(backend.model.layers[0]["attn_qkv"], 1):
        pytest.skip("this model's qkv GEMV does not read q8_32 codes")
    # Only o projections (int8 ones) too large to round their own input quantize it alone; a
    # non-int8 weight rounds in round_activations instead. SmolLM2 Q4_1: none.
    o_weights = [layer["attn_output"] for layer in backend.model.layers]
    expected_fused_o = sum(fuses_input_rounding(w, 1) for w in o_weights)
    expected_quantize = sum(takes_q8_codes(w, 1) for w in o_weights) - expected_fused_o
    gated = backend.model.config.activation in ("swiglu", "geglu")
    expected_fused_down = sum(gated and fuses_input_rounding(layer["ffn_down"], 1, floats_per_value=2)
                              for layer in backend.model.layers)
    backend.step([(0, [1, 9690, 198], 0)], False)  # prefill (and compiles)
    launches.clear()  # count the decode step only
    counts = launches
    logits = backend.step([(0, [2683], 3)], False)
    assert np.isfinite(logits).all()
    assert counts["quantize_q8_32"] == expected_quantize
    assert counts["gemv_int8_fused"] == expected_fused_o + expected_fused_down
    assert counts["gated_activation"] == (num_layers if gated else 0) - expected_fused_down
    assert counts["rope_write_kv"] == num_layers
    assert counts["apply_rope"] == 0 and counts["write_kv"] == 0
    assert counts["rms_norm"] == 2 * num_layers + 1
