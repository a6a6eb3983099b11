"""The CPU op set takes the `quantize_for` argument of the fused CUDA ops and returns exactly the
reference's result (the reference rounds activations inside `linear`)."""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from cupyserve.kernels.cpu_ops import CpuOps
from cupyserve.kernels.reference import activation, linear, norm


def test_quantize_for_changes_nothing_on_cpu():
    rng = np.random.default_rng(1)
    x, residual = rng.standard_normal((2, 3, 64), dtype=np.float32)
    norm_weight = rng.standard_normal(64, dtype=np.float32)
    matrix = rng.standard_normal((8, 64), dtype=np.float32)
    weight = linear.load_weight([matrix], [T.F32], 64)
    ops = CpuOps()
    np.testing.assert_array_equal(ops.rms_norm(x, norm_weight, 1e-5, quantize_for=weight),
                                  norm.rms_norm(x, norm_weight, 1e-5))
    for got, expected in zip(ops.add_rms_norm(x, residual, norm_weight, 1e-5, quantize_for=weight),
                             norm.add_rms_norm(x, residual, norm_weight, 1e-5)):
        np.testing.assert_array_equal(got, expected)
    gate_up = np.concatenate([x, residual], axis=1)
    np.testing.assert_array_equal(ops.swiglu(gate_up, quantize_for=weight), activation.swiglu(gate_up))
    np.testing.assert_array_equal(ops.geglu(gate_up, quantize_for=weight), activation.geglu(gate_up))
