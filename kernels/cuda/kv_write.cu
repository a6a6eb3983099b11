// Scatter new K/V rows into the paged fp16 cache at their slots (block * block_size + offset).
#include "common.cuh"

// One thread per (token, feature). Negative slots (padding) are skipped.
//   k, v: [num_tokens, k_stride / v_stride] float32, the first kv_width columns are the row
//   slot_mapping: [num_tokens] int64
//   k_cache, v_cache: [num_slots, kv_width] fp16 bits (= [num_blocks, block_size, kv_heads, head_dim])
__global__ void write_kv(const float* __restrict__ k, i64 k_stride, const float* __restrict__ v, i64 v_stride,
                         const i64* __restrict__ slot_mapping, int num_tokens, int kv_width,
                         u16* __restrict__ k_cache, u16* __restrict__ v_cache) {
    const i64 index = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (index >= (i64)num_tokens * kv_width) return;
    const i64 token = index / kv_width;
    const int col = (int)(index % kv_width);
    const i64 slot = slot_mapping[token];
    if (slot < 0) return;
    k_cache[slot * kv_width + col] = float_to_half(k[token * k_stride + col]);
    v_cache[slot * kv_width + col] = float_to_half(v[token * v_stride + col]);
}
