// RMSNorm (optionally fused with the residual add) and LayerNorm: one CTA per row, float32
// math with the reference's operation order ((x * inv) * w, products not contracted).
#include "q8_32.cuh"

//   x:        [num_rows, x_stride] float32 (first `hidden` columns used)
//   residual: [num_rows, hidden] float32 or null; when given, x + residual is normalized and
//             written to summed_out [num_rows, hidden]
//   weight:   [hidden] float32;  out: [num_rows, hidden] float32
//   codes, scales (QUANTIZE only): [num_rows, hidden] int8 and [num_rows, hidden / 32] float32, the
//             q8_32 rounding of `out` that the next int8 GEMV reads (saves it a quantize launch).
//             Needs hidden % 32 == 0: blockDim.x is a multiple of 32, so each warp then holds
//             exactly one 32-block per loop step and all its lanes stay converged.
template <int QUANTIZE>
__global__ void rms_norm(const float* __restrict__ x, i64 x_stride, const float* __restrict__ residual,
                         const float* __restrict__ weight, int hidden, float eps,
                         float* __restrict__ out, float* __restrict__ summed_out,
                         i8* __restrict__ codes, float* __restrict__ scales) {
    __shared__ float scratch[32];
    const i64 row = blockIdx.x;
    const float* src = x + row * x_stride;
    float sum_sq = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = src[i];
        if (residual) {
            v += residual[row * hidden + i];
            summed_out[row * hidden + i] = v;
        }
        sum_sq += v * v;
    }
    const float mean_square = block_sum(sum_sq, scratch) / (float)hidden;
    const float inv = 1.0f / sqrtf(mean_square + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        const float v = residual ? summed_out[row * hidden + i] : src[i];
        const float normed = __fmul_rn(__fmul_rn(v, inv), weight[i]);
        out[row * hidden + i] = normed;
        if (QUANTIZE) store_q8_32(normed, row * hidden + i, (row * hidden + i) >> 5, codes, scales);
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
