// Dequantize-GEMV for small batches over any supported type, with activations already rounded
// in float32 (round_activations): used where no int8 dot applies (F32/F16/BF16 weights, the
// k-quants with their 256-wide activation blocks, MXFP4). Each lane dequantizes a 32-value
// chunk into registers and multiplies it with every token's activations.
#include "common.cuh"
#include "quant_blocks.cuh"

// SPLIT warps per output row (1, or every warp of the CTA: one row a CTA); warp w of a row takes
// chunks 32w + lane, 32w + lane + 32 * SPLIT, ... A matrix of few rows (the gpt-oss router: 32 x
// 2880) would otherwise run a handful of warps, each walking its row alone; split, every chunk's
// load is in flight at once. The per-warp sums are added in warp order, whatever the batch.
//   weight: [num_rows, row_bytes] u8 blocks of TYPE
//   x:      [NUM_TOKENS, num_chunks * 32] float32, rounded as ggml rounds for TYPE
//   bias:   [num_rows] float32 or null
//   out:    [NUM_TOKENS, out_stride] float32
template <int TYPE, int NUM_TOKENS, int SPLIT>
__global__ void gemv_float(const u8* __restrict__ weight, i64 row_bytes, int num_rows, int num_chunks,
                           const float* __restrict__ x, const float* __restrict__ bias,
                           float* __restrict__ out, i64 out_stride) {
    __shared__ float partial[SPLIT][NUM_TOKENS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int rows_per_cta = (blockDim.x >> 5) / SPLIT;
    const int row = blockIdx.x * rows_per_cta + warp / SPLIT, slice = warp % SPLIT;
    if (row >= num_rows) return;  // with SPLIT > 1 the whole CTA (one row), so no barrier is skipped
    const i64 num_cols = (i64)num_chunks * 32;
    const u8* weight_row = weight + row * row_bytes;
    float acc[NUM_TOKENS];
#pragma unroll
    for (int t = 0; t < NUM_TOKENS; ++t) acc[t] = 0.0f;
#pragma unroll 2
    for (int chunk = 32 * slice + lane; chunk < num_chunks; chunk += 32 * SPLIT) {  // two chunks' loads in flight
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
        if (SPLIT == 1 && lane == 0) out[t * out_stride + row] = bias ? total + bias[row] : total;
        if (SPLIT > 1 && lane == 0) partial[slice][t] = total;
    }
    if (SPLIT == 1) return;
    __syncthreads();
    if (warp == 0 && lane < NUM_TOKENS) {
        float total = 0.0f;
#pragma unroll
        for (int s = 0; s < SPLIT; ++s) total += partial[s][lane];
        out[lane * out_stride + row] = bias ? total + bias[row] : total;
    }
}
