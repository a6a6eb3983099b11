"""A gated MLP input whose activation is not applied yet: the down GEMV applies it.

At decode batch sizes `swiglu` / `geglu` with `quantize_for=ffn_down` launch nothing when the
down GEMV can take the [gate | up] rows itself (`linear.fuses_input_rounding` with two floats a
value): they return a `GatedInput`, and `linear` runs gemv_int8_fused, whose CTAs each compute
act(gate) * up with the gated_activation kernel's own device functions (gated.cuh) and round it
to q8_32 codes in shared memory. That saves the activation launch; the result is bit-identical to
the activation launch + gemv_int8. Like `Q8Activations`, the model passes the object on untouched
to `ops.linear` only (the CPU op set never makes one: its swiglu returns the activated floats).
"""
from __future__ import annotations

from dataclasses import dataclass

import cupy
import numpy as np

GATED_ACTIVATIONS = ("swiglu", "geglu")  # linear.FUSED_INPUTS keys


@dataclass(frozen=True, eq=False)
class GatedInput:
    gate_up: cupy.ndarray  # [num_tokens, 2 * ffn] float32, contiguous: gate columns, then up
    activation: str  # one of GATED_ACTIVATIONS

    def __post_init__(self) -> None:
        if self.activation not in GATED_ACTIVATIONS:
            raise ValueError(f"GatedInput: activation {self.activation!r} is not one of {GATED_ACTIVATIONS}")
        if (self.gate_up.dtype != np.float32 or self.gate_up.ndim != 2 or self.gate_up.shape[1] % 64
                or not self.gate_up.flags.c_contiguous):
            raise ValueError(f"GatedInput: gate_up must be contiguous float32 [num_tokens, 2 * ffn] with "
                             f"ffn % 32 == 0, got {self.gate_up.dtype} {self.gate_up.shape}")

    @property
    def shape(self) -> tuple[int, int]:  # (num_tokens, ffn): the activated input's shape
        return self.gate_up.shape[0], self.gate_up.shape[1] // 2
