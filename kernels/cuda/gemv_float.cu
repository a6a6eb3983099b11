// Dequantize-GEMV for small batches over any supported type, with activations already rounded
// in float32 (round_activations): used where no int8 dot applies (F32/F16/BF16 weights, the
// k-quants with their 256-wide activation blocks, MXFP4). Each lane dequantizes a 32-value
// chunk into registers and multiplies it with every token's activations.
#include "common.cuh"
#include "quant_blocks.cuh"

// One warp per output row; lanes take chunks lane, lane + 32, ...
//   weight: [num_rows, row_bytes] u8 blocks of TYPE
//   x:      [NUM_TOKENS, num_chunks * 32] float32, rounded as ggml rounds for TYPE
//   bias:   [num_rows] float32 or null
//   out:    [NUM_TOKENS, out_stride] float32
template <int TYPE, int NUM_TOKENS>
__global__ void gemv_float(const u8* __restrict__ weight, i64 row_bytes, int num_rows, int num_chunks,
                           const float* __restrict__ x, const float* __restrict__ bias,
                           float* __restrict__ out, i64 out_stride) {
    const int warps_per_cta = blockDim.x >> 5;
    const int row = blockIdx.x * warps_per_cta + (threadIdx.x >> 5);
    if (row >= num_rows) return;
    const int lane = threadIdx.x & 31;
    const i64 num_cols = (i64)num_chunks * 32;
    const u8* weight_row = weight + row * row_bytes;
    float acc[NUM_TOKENS];
#pragma unroll
    for (int t = 0; t < NUM_TOKENS; ++t) acc[t] = 0.0f;
#pragma unroll 2
    for (int chunk = lane; chunk < num_chunks; chunk += 32) {  // unrolled: two chunks' loads in flight
        float w[32];
        dequant_chunk32<TYPE>(weight_row, chunk, w);
#pragma unroll
        for (int t = 0; t < NUM_TOKENS; ++t) {
            const float4* xs = reinterpret_cast<const float4*>(x + t * num_cols + 32 * chunk);
            float sum = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float4 v = xs[i];
                sum += w[4 * i] * v.x + w[4 * i + 1] * v.y + w[4 * i + 2] * v.z + w[4 * i + 3] * v.w;
            }
            acc[t] += sum;
        }
    }
#pragma unroll
    for (int t = 0; t < NUM_TOKENS; ++t) {
        const float total = warp_sum(acc[t]);
        if (lane == 0) out[t * out_stride + row] = bias ? total + bias[row] : total;
    }
}
