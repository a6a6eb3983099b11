// Shared pieces of the MoE kernels (moe_gemv.cu, moe_grouped.cu).
#pragma once
#include "common.cuh"

// gpt-oss's clamped SwiGLU in the reference's float32 operation order (kernels/reference/moe.py):
// g = min(g, limit); u = clip(u, -limit, limit); g / (1 + exp(-alpha g)) * (u + 1).
__device__ __forceinline__ float swiglu_oai(float g, float u, float alpha, float limit) {
    g = g < limit ? g : limit;
    u = u < -limit ? -limit : (u > limit ? limit : u);
    const float glu = __fdiv_rn(g, __fadd_rn(1.0f, expf(__fmul_rn(-alpha, g))));
    return __fmul_rn(glu, __fadd_rn(u, 1.0f));
}

// Row `row` of expert `expert` in an expert tensor stored as [num_experts, num_rows, row_bytes].
__device__ __forceinline__ const u8* expert_row(const u8* raw, int expert, i64 expert_bytes, int row,
                                                i64 row_bytes) {
    return raw + expert * expert_bytes + row * row_bytes;
}
