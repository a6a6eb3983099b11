// Fused dequantize-GEMV over the selected experts, for small batches (decode). One CTA row of
// warps per (token, slot) pair: the expert id is read from `selected` on the device, so the
// launch shape depends only on the number of pairs. Weights stay in their GGUF blocks; each lane
// dequantizes 32-value chunks into registers and dots them with the rounded float activations
// (like gemv_float.cu), so only the float32 summation order differs from the reference.
// Expert parallelism: ids are local to the rank's expert tensors; a pair routed to another rank
// (-1) costs its CTAs one load of `selected` and nothing else.
#include "common.cuh"
#include "quant_blocks.cuh"
#include "moe.cuh"

// Lanes take chunks lane, lane + 32, ... of one weight row; returns the warp's total on all lanes.
//   x: [num_chunks * 32] float32 activations of one row
template <int TYPE>
__device__ __forceinline__ float row_dot(const u8* weight_row, const float* __restrict__ x, int num_chunks) {
    const int lane = threadIdx.x & 31;
    float acc = 0.0f;
    for (int chunk = lane; chunk < num_chunks; chunk += 32) {
        float w[32];
        dequant_chunk32<TYPE>(weight_row, chunk, w);
        const float4* xs = reinterpret_cast<const float4*>(x + 32 * chunk);
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float4 v = xs[i];
            sum += w[4 * i] * v.x + w[4 * i + 1] * v.y + w[4 * i + 2] * v.z + w[4 * i + 3] * v.w;
        }
        acc += sum;
    }
    return warp_sum(acc);
}

// h = swiglu_oai(gate_e . x + gate_bias[e], up_e . x + up_bias[e]) for pair = blockIdx.y.
// grid (ceil(ffn / warps_per_cta), num_pairs); a warp per ffn row.
//   gate_raw, up_raw: [num_experts, ffn, row_bytes] u8 blocks of TYPE
//   selected: [num_pairs] int32 local expert id or -1, pair = token * k + slot
//   x:        [num_tokens, num_chunks * 32] float32, rounded for TYPE
//   gate_bias, up_bias: [num_experts, ffn] float32 or null
//   h:        [num_pairs, ffn] float32
template <int TYPE>
__global__ void moe_gate_up_gemv(const u8* __restrict__ gate_raw, const u8* __restrict__ up_raw,
                                 i64 expert_bytes, i64 row_bytes, int ffn, int num_chunks,
                                 const int* __restrict__ selected, int k, const float* __restrict__ x,
                                 const float* __restrict__ gate_bias, const float* __restrict__ up_bias,
                                 float alpha, float limit, float* __restrict__ h) {
    const int warps_per_cta = blockDim.x >> 5;
    const int row = blockIdx.x * warps_per_cta + (threadIdx.x >> 5);
    if (row >= ffn) return;
    const int pair = blockIdx.y;
    const int expert = selected[pair];
    if (expert < 0) return;  // another rank's expert: the whole CTA leaves, h's row stays unwritten
    const float* x_row = x + (i64)(pair / k) * num_chunks * 32;
    const float g = row_dot<TYPE>(expert_row(gate_raw, expert, expert_bytes, row, row_bytes), x_row, num_chunks);
    const float u = row_dot<TYPE>(expert_row(up_raw, expert, expert_bytes, row, row_bytes), x_row, num_chunks);
    if ((threadIdx.x & 31) != 0) return;
    const i64 bias_index = (i64)expert * ffn + row;
    h[(i64)pair * ffn + row] = swiglu_oai(gate_bias ? g + gate_bias[bias_index] : g,
                                          up_bias ? u + up_bias[bias_index] : u, alpha, limit);
}

// y = down_e . h + down_bias[e] for pair = blockIdx.y. grid (ceil(hidden / warps_per_cta), num_pairs).
//   down_raw: [num_experts, hidden, row_bytes] u8 blocks of TYPE
//   selected: [num_pairs] int32 local expert id or -1
//   h:        [num_pairs, num_chunks * 32] float32, rounded for TYPE
//   down_bias: [num_experts, hidden] float32 or null
//   y:        [num_pairs, hidden] float32
template <int TYPE>
__global__ void moe_down_gemv(const u8* __restrict__ down_raw, i64 expert_bytes, i64 row_bytes, int hidden,
                              int num_chunks, const int* __restrict__ selected, const float* __restrict__ h,
                              const float* __restrict__ down_bias, float* __restrict__ y) {
    const int warps_per_cta = blockDim.x >> 5;
    const int row = blockIdx.x * warps_per_cta + (threadIdx.x >> 5);
    if (row >= hidden) return;
    const int pair = blockIdx.y;
    const int expert = selected[pair];
    if (expert < 0) return;  // another rank's expert: moe_combine never reads this y row
    const float total = row_dot<TYPE>(expert_row(down_raw, expert, expert_bytes, row, row_bytes),
                                      h + (i64)pair * num_chunks * 32, num_chunks);
    if ((threadIdx.x & 31) == 0)
        y[(i64)pair * hidden + row] = down_bias ? total + down_bias[(i64)expert * hidden + row] : total;
}
