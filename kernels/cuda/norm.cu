// RMSNorm (optionally fused with the residual add) and LayerNorm: one CTA per row, float32
// math with the reference's operation order ((x * inv) * w, products not contracted).
#include "q8_32.cuh"

// Single pass: thread t keeps columns t, t + blockDim.x, ..., t + (ELEMS - 1) * blockDim.x in
// registers (coalesced loads), so x, residual and weight are read once, all before the
// reduction, and nothing is read back from summed_out. blockDim.x = 32 * ceil(hidden / (32 *
// ELEMS)) <= 1024 (launcher: norm.py), so at most 31 threads of the last warp idle.
//   x:        [num_rows, x_stride] float32 (first `hidden` columns used)
//   residual: [num_rows, hidden] float32 or null; when given, x + residual is normalized and
//             written to summed_out [num_rows, hidden]
//   weight:   [hidden] float32;  out: [num_rows, hidden] float32
//   codes, scales (QUANTIZE only): [num_rows, hidden] int8 and [num_rows, hidden / 32] float32, the
//             q8_32 rounding of `out` that the next int8 GEMV reads (saves it a quantize launch).
//             Needs hidden % 32 == 0: blockDim.x is a multiple of 32, so at every step k each
//             warp holds exactly one whole 32-block (or none: `inside` is then warp-uniform) and
//             its lanes stay converged for store_q8_32's shuffles.
template <int QUANTIZE, int ELEMS>
__global__ void __launch_bounds__(1024)
rms_norm(const float* __restrict__ x, i64 x_stride, const float* __restrict__ residual,
         const float* __restrict__ weight, int hidden, float eps, float* __restrict__ out,
         float* __restrict__ summed_out, i8* __restrict__ codes, float* __restrict__ scales) {
    __shared__ float warp_sums[32];
    const i64 row = blockIdx.x;
    const float* src = x + row * x_stride;
    const i64 row_start = row * hidden;
    float v[ELEMS], r[ELEMS], w[ELEMS];
#pragma unroll
    for (int k = 0; k < ELEMS; ++k) {  // loads only: all of them in flight at once
        const int i = threadIdx.x + k * blockDim.x;
        const bool inside = i < hidden;
        v[k] = inside ? src[i] : 0.0f;
        r[k] = residual && inside ? residual[row_start + i] : 0.0f;
        w[k] = inside ? weight[i] : 0.0f;
    }
    float sum_sq = 0.0f;
#pragma unroll
    for (int k = 0; k < ELEMS; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (residual) {  // no `+ 0.0f` without a residual: it would turn -0.0 into +0.0
            v[k] += r[k];
            if (i < hidden) summed_out[row_start + i] = v[k];
        }
        // Explicit fma: the same rounding in every instantiation (QUANTIZE 0 and 1 give the same
        // floats), whatever the compiler would contract. Columns past hidden hold 0.
        sum_sq = __fmaf_rn(v[k], v[k], sum_sq);
    }
    // Warp shuffles, then one shared-memory step across the (<= 32) warps.
    const int lane = threadIdx.x & 31;
    sum_sq = warp_sum(sum_sq);
    if (lane == 0) warp_sums[threadIdx.x >> 5] = sum_sq;
    __syncthreads();
    const float total = warp_sum(lane < (int)(blockDim.x >> 5) ? warp_sums[lane] : 0.0f);
    const float mean_square = total / (float)hidden;
    const float inv = 1.0f / sqrtf(mean_square + eps);
#pragma unroll
    for (int k = 0; k < ELEMS; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i >= hidden) continue;  // warp-uniform when QUANTIZE (hidden % 32 == 0)
        const float normed = __fmul_rn(__fmul_rn(v[k], inv), w[k]);
        out[row_start + i] = normed;
        if (QUANTIZE) store_q8_32(normed, row_start + i, (row_start + i) >> 5, codes, scales);
    }
}

//   x:        [num_rows, hidden] float32
//   residual: [num_rows, hidden] float32 or null; when given, x + residual is normalized and
//             written to summed_out [num_rows, hidden] (GPT-2's pre-norm residual stream)
//   weight, bias: [hidden] float32 (bias may be null);  out: [num_rows, hidden] float32
__global__ void layer_norm(const float* __restrict__ x, const float* __restrict__ residual,
                           const float* __restrict__ weight, const float* __restrict__ bias, int hidden,
                           float eps, float* __restrict__ out, float* __restrict__ summed_out) {
    __shared__ float scratch[32];
    const i64 row_start = (i64)blockIdx.x * hidden;
    // With a residual, each thread re-reads only the sums it wrote itself: no barrier needed.
    const float* src = residual ? summed_out + row_start : x + row_start;
    float* dst = out + row_start;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = x[row_start + i];
        if (residual) {
            v += residual[row_start + i];
            summed_out[row_start + i] = v;
        }
        sum += v;
    }
    const float mean = block_sum(sum, scratch) / (float)hidden;
    float sum_sq = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        const float c = src[i] - mean;
        sum_sq += c * c;
    }
    const float denom = sqrtf(block_sum(sum_sq, scratch) / (float)hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        const float v = __fmul_rn((src[i] - mean) / denom, weight[i]);
        dst[i] = bias ? v + bias[i] : v;
    }
}
