// Tensor-core helpers for moe_grouped_mma.cu (sm_80+ `mma.sync`).
#pragma once
#include "common.cuh"

// c[16 x 8] += a[16 x 16] . b[16 x 8], fp16 inputs, fp32 accumulation. Fragments (PTX ISA,
// m16n8k16 .f16): with g = lane / 4 and t = lane % 4, a[0] holds A[g][2t..2t+1], a[1] A[g+8][2t..],
// a[2] A[g][2t+8..], a[3] A[g+8][2t+8..]; b[0] holds B[2t..2t+1][g], b[1] B[2t+8..2t+9][g]; c[0..1]
// are C[g][2t..2t+1], c[2..3] C[g+8][2t..2t+1]. The lower column / k index sits in the low half.
__device__ __forceinline__ void mma_m16n8k16(float c[4], const u32 a[4], const u32 b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
