"""MLP activation launchers: SwiGLU, GeGLU (gate columns first, then up) and tanh-GELU."""
from __future__ import annotations

import cupy
import numpy as np

from .arrays import contiguous_f32, optional
from .gated_input import GatedInput
from .linear import codes_for_producer, fuses_input_rounding
from .module_cache import blocks_for, launch
from .q8_activations import Q8Activations


def _gated(gate_up: cupy.ndarray, use_gelu: int, quantize_for) -> cupy.ndarray | Q8Activations | GatedInput:
    gate_up = contiguous_f32(gate_up)
    num_tokens, ffn = gate_up.shape[0], gate_up.shape[1] // 2
    # A down GEMV that can apply the activation itself gets the [gate | up] rows: no launch here.
    if fuses_input_rounding(quantize_for, num_tokens, floats_per_value=2) and quantize_for.in_features == ffn:
        return GatedInput(gate_up, "geglu" if use_gelu else "swiglu")
    out = cupy.empty((num_tokens, ffn), dtype=np.float32)
    codes, scales = codes_for_producer(quantize_for, num_tokens, ffn)
    if num_tokens * ffn:
        launch("gated_activation.cu", f"gated_activation<{use_gelu}, {int(codes is not None)}>",
               (blocks_for(num_tokens * ffn, 256),), (256,),
               (gate_up, np.int32(num_tokens), np.int32(ffn), out, optional(codes, np.int8), optional(scales)))
    return out if codes is None else Q8Activations(out, codes, scales)


def swiglu(
    gate_up: cupy.ndarray,  # [num_tokens, 2 * ffn] float32
    quantize_for=None,  # the weight `linear` multiplies the result with, if it is only fed there
) -> cupy.ndarray | Q8Activations | GatedInput:  # [num_tokens, ffn] float32
    """silu(gate) * up. With `quantize_for` a weight whose decode GEMV reads q8_32 codes, the
    result is for `linear` only: a `GatedInput` (nothing launched; the GEMV applies the
    activation) where `linear.fuses_input_rounding` allows, else a `Q8Activations` (the launch also
    emits the codes, as `norm.rms_norm` does)."""
    return _gated(gate_up, 0, quantize_for)


def geglu(
    gate_up: cupy.ndarray,  # [num_tokens, 2 * ffn] float32
    quantize_for=None,  # as for swiglu
) -> cupy.ndarray | Q8Activations | GatedInput:  # [num_tokens, ffn] float32
    return _gated(gate_up, 1, quantize_for)


def gelu(
    x: cupy.ndarray,  # any shape, float32
) -> cupy.ndarray:  # same shape, float32
    x = contiguous_f32(x)
    out = cupy.empty_like(x)
    if x.size:
        launch("gated_activation.cu", "gelu", (blocks_for(x.size, 256),), (256,),
               (x, np.int64(x.size), out))
    return out
