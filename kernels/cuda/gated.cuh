// The MLP gate functions, shared by the gated_activation launch and the down GEMV that applies
// them itself (gemv_int8_fused): one definition, so both produce the same floats bit for bit.
#pragma once
#include "common.cuh"

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float gelu_tanh(float x) {
    const float inner = 0.7978845608028654f * (x + __fmul_rn(__fmul_rn(__fmul_rn(0.044715f, x), x), x));
    return __fmul_rn(__fmul_rn(0.5f, x), 1.0f + tanhf(inner));
}

// SwiGLU (GELU = 0) or GeGLU (GELU = 1) of one column: act(gate) * up, the product not contracted.
template <int GELU>
__device__ __forceinline__ float gated_value(float gate, float up) {
    return __fmul_rn(GELU ? gelu_tanh(gate) : silu(gate), up);
}
