// Rotary position embedding: the cos/sin table (float64 angles, like the reference) and its
// application in the normal (adjacent pairs) or neox (halves) layout.
#include "common.cuh"

//   positions: [num_tokens] int32;  inv_freq: [half] float64 (freq factors, YaRN blend applied)
//   magnitude: YaRN's cos/sin scale (1 without YaRN)
//   cos_out, sin_out: [num_tokens, half] float32
__global__ void rope_cos_sin(const int* __restrict__ positions, const double* __restrict__ inv_freq,
                             int num_tokens, int half, double scale, double magnitude,
                             float* __restrict__ cos_out, float* __restrict__ sin_out) {
    const i64 index = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (index >= (i64)num_tokens * half) return;
    const int token = (int)(index / half), i = (int)(index % half);
    const double angle = ((double)positions[token] * scale) * inv_freq[i];
    cos_out[index] = (float)(cos(angle) * magnitude);
    sin_out[index] = (float)(sin(angle) * magnitude);
}

// Feature i of one head after rotation (features past rope_dim unchanged).
//   head: the head's head_dim float32 values; cos_row/sin_row: the token's [rope_dim / 2] tables
template <int NEOX>
__device__ __forceinline__ float rotated(const float* head, int i, const float* cos_row, const float* sin_row,
                                         int rope_dim) {
    if (i >= rope_dim) return head[i];
    const int half = rope_dim / 2;
    int pair, first, second;
    bool is_first;
    if (NEOX) {
        pair = i < half ? i : i - half;
        first = pair;
        second = pair + half;
        is_first = i < half;
    } else {
        pair = i >> 1;
        first = 2 * pair;
        second = 2 * pair + 1;
        is_first = (i & 1) == 0;
    }
    const float c = cos_row[pair], s = sin_row[pair];
    const float x0 = head[first], x1 = head[second];
    return is_first ? __fmul_rn(x0, c) - __fmul_rn(x1, s) : __fmul_rn(x0, s) + __fmul_rn(x1, c);
}

// One thread per output element.
//   x:   [num_tokens, x_stride] float32, token t's heads at x + t * x_stride as [num_heads, head_dim]
//   cos, sin: [num_tokens, rope_dim / 2] float32
//   out: [num_tokens, num_heads, head_dim] float32
template <int NEOX>
__global__ void apply_rope(const float* __restrict__ x, i64 x_stride, const float* __restrict__ cos_table,
                           const float* __restrict__ sin_table, int num_tokens, int num_heads,
                           int head_dim, int rope_dim, float* __restrict__ out) {
    const i64 index = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    const i64 per_token = (i64)num_heads * head_dim;
    if (index >= num_tokens * per_token) return;
    const i64 token = index / per_token;
    const int within = (int)(index % per_token), i = within % head_dim;
    const int half = rope_dim / 2;
    out[index] = rotated<NEOX>(x + token * x_stride + (within - i), i, cos_table + token * half,
                               sin_table + token * half, rope_dim);
}

// The decode/prefill step's rope and KV write in one launch: q rotated into q_out; k rotated and v
// copied, as fp16, into the paged cache at each token's slot (negative slots skipped). The same
// arithmetic as apply_rope (q, k) followed by write_kv, value for value.
//   q, k, v: [num_tokens, *_stride] float32 (row-strided views of the fused qkv output)
//   q_out: [num_tokens, num_heads, head_dim] float32
//   k_cache, v_cache: [num_slots, num_kv_heads * head_dim] fp16 bits;  slot_mapping: [num_tokens] int64
template <int NEOX>
__global__ void rope_write_kv(const float* __restrict__ q, i64 q_stride, const float* __restrict__ k, i64 k_stride,
                              const float* __restrict__ v, i64 v_stride, const float* __restrict__ cos_table,
                              const float* __restrict__ sin_table, const i64* __restrict__ slot_mapping,
                              int num_tokens, int num_heads, int num_kv_heads, int head_dim, int rope_dim,
                              float* __restrict__ q_out, u16* __restrict__ k_cache, u16* __restrict__ v_cache) {
    const i64 index = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    const int q_width = num_heads * head_dim, kv_width = num_kv_heads * head_dim;
    const i64 per_token = (i64)q_width + 2 * kv_width;
    if (index >= num_tokens * per_token) return;
    const i64 token = index / per_token;
    int col = (int)(index % per_token);
    const int half = rope_dim / 2;
    const float* cos_row = cos_table + token * half;
    const float* sin_row = sin_table + token * half;
    if (col < q_width) {
        const int i = col % head_dim;
        q_out[token * q_width + col] = rotated<NEOX>(q + token * q_stride + (col - i), i, cos_row, sin_row, rope_dim);
        return;
    }
    const i64 slot = slot_mapping[token];
    if (slot < 0) return;
    col -= q_width;
    if (col < kv_width) {
        const int i = col % head_dim;
        k_cache[slot * kv_width + col] =
            float_to_half(rotated<NEOX>(k + token * k_stride + (col - i), i, cos_row, sin_row, rope_dim));
    } else {
        col -= kv_width;
        v_cache[slot * kv_width + col] = float_to_half(v[token * v_stride + col]);
    }
}
