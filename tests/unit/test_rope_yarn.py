"""YaRN rope scaling of the reference kernel against a direct float64 transcription of ggml's
rope_yarn (the per-pair extrapolated and interpolated angles blended by the ramp, cos/sin scaled by
the magnitude llama.cpp's context code and kernel multiply together)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cupyserve.kernels.reference.rope import YarnScaling, rope_cos_sin


def yarn_table_direct(positions, rope_dim, base, factor, original_context, beta_fast, beta_slow,
                      attn_factor=1.0, log_multiplier=0.0):
    def correction_dim(rotations):
        return rope_dim * math.log(original_context / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(0, math.floor(correction_dim(beta_fast)))
    high = min(rope_dim - 1, math.ceil(correction_dim(beta_slow)))
    freq_scale = 1.0 / factor

    def mscale(m):
        return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0

    # llama-context: host factor, cancelled by the kernel's own (1 + 0.1 ln factor), times attn_factor
    host = (mscale(1.0) / mscale(log_multiplier) if log_multiplier else mscale(1.0))
    host = host / (1.0 + 0.1 * math.log(factor)) * attn_factor
    magnitude = host * (1.0 + 0.1 * math.log(1.0 / freq_scale))
    cos = np.empty((len(positions), rope_dim // 2))
    sin = np.empty_like(cos)
    for t, p in enumerate(positions):
        for i in range(rope_dim // 2):
            theta_extrap = p * base ** (-2.0 * i / rope_dim)
            theta_interp = freq_scale * theta_extrap
            y = (i - low) / max(0.001, high - low)
            ramp_mix = 1.0 - min(1.0, max(0.0, y))
            theta = theta_interp * (1 - ramp_mix) + theta_extrap * ramp_mix
            cos[t, i] = math.cos(theta) * magnitude
            sin[t, i] = math.sin(theta) * magnitude
    return cos, sin


@pytest.mark.parametrize("rope_dim,base,factor,original,fast,slow,attn,log_mul", [
    (64, 150000.0, 32.0, 4096, 32.0, 1.0, 1.0, 0.0),  # gpt-oss-20b
    (128, 10000.0, 4.0, 2048, 32.0, 1.0, 1.0, 0.0),
    (64, 10000.0, 8.0, 1024, 16.0, 2.0, 0.9, 0.0),
    (32, 500000.0, 40.0, 4096, 32.0, 1.0, 1.0, 1.0),  # a yarn_log_multiplier cancels the magnitude
])
def test_yarn_table_matches_float64_formula(rope_dim, base, factor, original, fast, slow, attn, log_mul):
    positions = np.array([0, 1, 7, 100, 4095, 4096, 50000, 131071], dtype=np.int64)
    yarn = YarnScaling(factor=factor, original_context=original, beta_fast=fast, beta_slow=slow,
                       attn_factor=attn, log_multiplier=log_mul)
    cos, sin = rope_cos_sin(positions, rope_dim, base, yarn=yarn)
    want_cos, want_sin = yarn_table_direct(positions, rope_dim, base, factor, original, fast, slow, attn, log_mul)
    assert cos.dtype == np.float32 and cos.shape == (len(positions), rope_dim // 2)
    np.testing.assert_allclose(cos, want_cos, rtol=0, atol=2e-6)
    np.testing.assert_allclose(sin, want_sin, rtol=0, atol=2e-6)


def test_yarn_gpt_oss_values():
    yarn = YarnScaling(factor=32.0, original_context=4096)
    assert yarn.magnitude == pytest.approx(1.0 + 0.1 * math.log(32.0))
    scales = yarn.pair_scales(64, 150000.0)
    # the fastest pairs keep their frequency, the slowest are interpolated by 1/32
    assert scales[0] == 1.0 and scales[-1] == pytest.approx(1 / 32)
    assert np.all(np.diff(scales) <= 0)
    # no scaling: the plain table, unscaled
    cos, _ = rope_cos_sin(np.arange(4), 64, 150000.0)
    assert np.abs(cos).max() <= 1.0


@pytest.mark.parametrize("kwargs", [dict(factor=0.5, original_context=4096),
                                    dict(factor=4.0, original_context=0),
                                    dict(factor=4.0, original_context=4096, beta_fast=0.0)])
def test_yarn_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        YarnScaling(**kwargs)
