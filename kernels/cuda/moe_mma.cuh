// Tensor-core helper for moe_grouped_mma.cu (sm_80+ `mma.sync`).
#pragma once
#include "common.cuh"

// c[16 x 8] += a[16 x 32] . b[32 x 8], int8 inputs, int32 accumulation (exact). Fragments (PTX
// ISA, m16n8k32 .s8): with g = lane / 4 and t = lane % 4, each register holds 4 int8 of
// consecutive k, lowest k in the low byte: a[0] = A[g][4t..4t+3], a[1] = A[g+8][4t..],
// a[2] = A[g][16+4t..], a[3] = A[g+8][16+4t..]; b_lo = B[4t..4t+3][g], b_hi = B[16+4t..][g];
// c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..2t+1].
__device__ __forceinline__ void mma_m16n8k32_s8(int c[4], const int a[4], int b_lo, int b_hi) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b_lo), "r"(b_hi));
}
