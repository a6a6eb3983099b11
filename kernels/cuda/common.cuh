// Shared device helpers for every cupyserve kernel. Inlined textually by module_cache.py
// (so a change here changes the source text CuPy keys its compile cache on).
//
// No system headers: NVRTC then needs no CUDA include path, and fp16 conversions go through
// the PTX cvt instructions directly (round to nearest even, like NumPy's astype(float16)).
#pragma once

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

__device__ __forceinline__ float half_to_float(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 float_to_half(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float round_to_half(float f) { return half_to_float(float_to_half(f)); }

// Little-endian loads from addresses that are only 2-byte aligned (GGUF blocks of 18, 22, 34
// bytes put their fields at even offsets only).
__device__ __forceinline__ u16 load_u16(const u8* p) { return *reinterpret_cast<const u16*>(p); }

__device__ __forceinline__ int load_i32_2aligned(const u8* p) {
    const u16* q = reinterpret_cast<const u16*>(p);
    return (int)((u32)q[0] | ((u32)q[1] << 16));
}

// The 4 bytes at byte address p, which may sit at any offset (17-byte MXFP4 blocks): two aligned
// word loads (the second skipped when p is aligned) joined by a funnel shift; 3 load instructions
// fewer than byte loads. Both words hold a byte of p..p+3, so neither can cross into an unmapped
// page.
__device__ __forceinline__ u32 load_u32_unaligned(const u8* p) {
    const unsigned long long address = (unsigned long long)p;
    const u32* word = reinterpret_cast<const u32*>(address & ~3ull);
    const u32 shift = 8u * (u32)(address & 3ull);
    const u32 lo = __ldg(word);
    const u32 hi = shift ? __ldg(word + 1) : 0u;
    return __funnelshift_r(lo, hi, shift);
}

__device__ __forceinline__ float neg_infinity() { return __int_as_float(0xff800000); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Block-wide sum / max; every thread gets the result. `scratch` holds >= 32 floats and is
// reused, so callers must not touch it between two reductions without this function's barriers.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, num_warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = lane < num_warps ? scratch[lane] : 0.0f;
    return warp_sum(total);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, num_warps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = lane < num_warps ? scratch[lane] : neg_infinity();
    return warp_max(total);
}
