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

// One thread per output element; features past rope_dim are copied unchanged.
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
    const float* head = x + token * x_stride + (within - i);
    if (i >= rope_dim) {
        out[index] = head[i];
        return;
    }
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
    const float c = cos_table[token * half + pair], s = sin_table[token * half + pair];
    const float x0 = head[first], x1 = head[second];
    out[index] = is_first ? __fmul_rn(x0, c) - __fmul_rn(x1, s) : __fmul_rn(x0, s) + __fmul_rn(x1, c);
}
