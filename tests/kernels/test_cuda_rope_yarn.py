"""The CUDA rope table with YaRN scaling against the NumPy reference."""
from __future__ import annotations

import numpy as np
import pytest

from cupyserve.kernels.reference import rope

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("rope_dim,base,factor", [(64, 150000.0, 32.0), (128, 10000.0, 4.0)])
def test_rope_cos_sin_yarn(cuda_ops, rope_dim, base, factor):
    import cupy

    yarn = rope.YarnScaling(factor=factor, original_context=4096, beta_fast=32.0, beta_slow=1.0)
    positions = np.random.default_rng(rope_dim).integers(0, 131072, size=300).astype(np.int32)
    cos, sin = cuda_ops.rope_cos_sin(cupy.asarray(positions), rope_dim, base, None, 1.0, yarn=yarn)
    ref_cos, ref_sin = rope.rope_cos_sin(positions, rope_dim, base, None, 1.0, yarn=yarn)
    np.testing.assert_allclose(cupy.asnumpy(cos), ref_cos, rtol=0, atol=2e-6)
    np.testing.assert_allclose(cupy.asnumpy(sin), ref_sin, rtol=0, atol=2e-6)
    plain_cos, _ = cuda_ops.rope_cos_sin(cupy.asarray(positions), rope_dim, base)
    assert np.abs(cupy.asnumpy(plain_cos) - ref_cos).max() > 0.1  # YaRN really changed the table
