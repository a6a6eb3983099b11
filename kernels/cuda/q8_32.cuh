// ggml's q8_32 activation rounding (blocks of 32 values, one fp16 scale), shared by the
// standalone quantize kernel and the producers that emit the codes themselves (norm, SwiGLU),
// so every path produces the same codes and scales bit for bit.
#pragma once
#include "common.cuh"

// 1/scale and the code exactly as NumPy computes them: IEEE division, rint (half to even).
__device__ __forceinline__ float q8_code(float x, float scale) {
    const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    return rintf(__fmul_rn(x, inv));
}

// Called by all 32 lanes of a warp that hold one q8_32 block (lane j holds value j of the block,
// at codes[index]); block_index is where the block's scale goes. The warp must be converged.
//   codes: int8, one per value;  scales: float32 (the fp16-rounded scale, widened), one per block
__device__ __forceinline__ void store_q8_32(float v, i64 index, i64 block_index, i8* __restrict__ codes,
                                            float* __restrict__ scales) {
    const float scale = warp_max(fabsf(v)) / 127.0f;
    codes[index] = (i8)(int)q8_code(v, scale);
    if ((threadIdx.x & 31) == 0) scales[block_index] = round_to_half(scale);
}
