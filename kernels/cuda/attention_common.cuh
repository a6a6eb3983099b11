// Device helpers shared by the paged attention kernels (paged_attention.cu, paged_attention_decode.cu).
#pragma once
#include "common.cuh"

// Element offset of key `key`'s head `kv_head` in the paged fp16 cache.
//   table: the sequence's block ids; token_stride = num_kv_heads * head_dim
__device__ __forceinline__ i64 key_offset(const int* table, int key, int block_size, i64 token_stride,
                                          int kv_head, int head_dim) {
    const i64 slot = (i64)table[key / block_size] * block_size + key % block_size;
    return slot * token_stride + (i64)kv_head * head_dim;
}

// scale * (q . k), then the optional logit softcap. The K row is read with 16-byte loads, all
// issued before the first use when head_dim % 8 == 0 (every real model): a loop of dependent
// 4-byte loads made each score wait head_dim / 2 memory round trips.
__device__ __forceinline__ float key_score(const float* q_shared, const u16* k_cache, i64 offset, int head_dim,
                                           float scale, float softcap) {
    float dot = 0.0f;
    if ((head_dim & 7) == 0) {
        const uint4* k_row = reinterpret_cast<const uint4*>(k_cache + offset);  // 16-byte aligned
#pragma unroll 8
        for (int d8 = 0; d8 < head_dim / 8; ++d8) {
            const uint4 pack = k_row[d8];
            const u32 words[4] = {pack.x, pack.y, pack.z, pack.w};
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                const int d = 8 * d8 + 2 * w;
                dot += q_shared[d] * half_to_float((u16)(words[w] & 0xFFFF)) +
                       q_shared[d + 1] * half_to_float((u16)(words[w] >> 16));
            }
        }
    } else {
        const u32* k_row = reinterpret_cast<const u32*>(k_cache + offset);  // head_dim is even
#pragma unroll 8
        for (int d2 = 0; d2 < head_dim / 2; ++d2) {
            const u32 pair = k_row[d2];
            dot += q_shared[2 * d2] * half_to_float((u16)(pair & 0xFFFF)) +
                   q_shared[2 * d2 + 1] * half_to_float((u16)(pair >> 16));
        }
    }
    float score = dot * scale;
    if (softcap > 0.0f) score = softcap * tanhf(score / softcap);
    return score;
}
