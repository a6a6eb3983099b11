// MoE routing on the device (see kernels/reference/moe.py for the contract): top-k experts per
// token with their softmax weights, and the counting sort that groups (token, slot) pairs by
// expert for the grouped GEMM. Every buffer has a size fixed by (num_tokens, k, num_experts), so
// nothing here needs the host to read a device value (the layer can be captured in a CUDA graph).
#include "common.cuh"

// Is (v, i) ranked before (best_v, best_i)? Rank: larger logit first, then lower index.
__device__ __forceinline__ bool ranks_before(float v, int i, float best_v, int best_i) {
    return best_i < 0 || v > best_v || (v == best_v && i < best_i);
}

// One warp per token. Round r picks the best-ranked expert ranked after round r-1's pick, so no
// per-expert state is kept and -inf logits are still selectable. NaN logits are never picked;
// a row with fewer than k non-NaN logits gets expert 0 with weight NaN in the missing slots.
// Expert parallelism: the choice and the weights are always over all num_experts; the ids written
// are local to the rank's experts [expert_begin, expert_begin + num_local), and -1 marks a slot
// routed to another rank's expert, which every later kernel skips (the whole range writes the
// global ids unchanged).
//   logits:   [num_tokens, num_experts] float32
//   selected: [num_tokens, k] int32 local expert ids or -1, in rank order
//   weights:  [num_tokens, k] float32 softmax over the k chosen logits
__global__ void moe_route(const float* __restrict__ logits, int num_tokens, int num_experts, int k,
                          int expert_begin, int num_local, int* __restrict__ selected,
                          float* __restrict__ weights) {
    const int warps_per_cta = blockDim.x >> 5;
    const int token = blockIdx.x * warps_per_cta + (threadIdx.x >> 5);
    if (token >= num_tokens) return;
    const int lane = threadIdx.x & 31;
    const float* row = logits + (i64)token * num_experts;
    float prev_v = __int_as_float(0x7f800000);  // +inf: every logit ranks after the start
    int prev_i = -1;
    for (int r = 0; r < k; ++r) {
        float best_v = 0.0f;
        int best_i = -1;
        for (int e = lane; e < num_experts; e += 32) {
            const float v = row[e];
            const bool after_prev = v < prev_v || (v == prev_v && e > prev_i);
            if (after_prev && ranks_before(v, e, best_v, best_i)) { best_v = v; best_i = e; }
        }
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) {
            const float other_v = __shfl_xor_sync(0xffffffffu, best_v, offset);
            const int other_i = __shfl_xor_sync(0xffffffffu, best_i, offset);
            if (other_i >= 0 && ranks_before(other_v, other_i, best_v, best_i)) { best_v = other_v; best_i = other_i; }
        }
        if (lane == 0) {
            const int local = (best_i < 0 ? 0 : best_i) - expert_begin;
            selected[(i64)token * k + r] = local >= 0 && local < num_local ? local : -1;
            weights[(i64)token * k + r] = best_i < 0 ? __int_as_float(0x7fc00000) : best_v;
        }
        prev_v = best_v;
        prev_i = best_i < 0 ? num_experts : best_i;
    }
    if (lane != 0) return;
    // Softmax over the chosen logits as the reference computes it: exp(l - l_first) (the first
    // pick holds the maximum), summed in rank order, then one IEEE division each.
    float* w = weights + (i64)token * k;
    const float first = w[0];
    float sum = 0.0f;
    for (int r = 0; r < k; ++r) {
        w[r] = expf(__fsub_rn(w[r], first));
        sum = __fadd_rn(sum, w[r]);
    }
    for (int r = 0; r < k; ++r) w[r] = __fdiv_rn(w[r], sum);
}

// Pairs routed to another rank's experts (-1) are counted nowhere, so the grouped GEMMs never
// see them.
//   selected: [num_pairs] int32 local id or -1 (pair p = token * k + slot)
//   counts:   [num_experts] int32 (the rank's experts), zeroed
__global__ void moe_count_pairs(const int* __restrict__ selected, int num_pairs, int* __restrict__ counts) {
    const int pair = blockIdx.x * blockDim.x + threadIdx.x;
    if (pair >= num_pairs) return;
    const int expert = selected[pair];
    if (expert >= 0) atomicAdd(&counts[expert], 1);
}

// One CTA. Each expert's group starts on a multiple of tile_rows (padded), so a row tile of the
// grouped GEMM never spans two experts; tile_expert maps every tile of the fixed-size buffer to
// its expert, or -1 past the last used tile.
//   counts: [num_experts];  group_begin: [num_experts + 1] padded row offsets;  tile_expert: [max_tiles]
__global__ void moe_group_offsets(const int* __restrict__ counts, int num_experts, int tile_rows,
                                  int max_tiles, int* __restrict__ group_begin, int* __restrict__ tile_expert) {
    if (threadIdx.x == 0) {
        int running = 0;
        for (int e = 0; e < num_experts; ++e) {
            group_begin[e] = running;
            running += (counts[e] + tile_rows - 1) / tile_rows * tile_rows;
        }
        group_begin[num_experts] = running;
    }
    __syncthreads();
    for (int tile = threadIdx.x; tile < max_tiles; tile += blockDim.x) {
        const int first_row = tile * tile_rows;
        int expert = -1;
        for (int e = 0; e < num_experts; ++e) {
            if (first_row >= group_begin[e] && first_row < group_begin[e + 1]) { expert = e; break; }
        }
        tile_expert[tile] = expert;
    }
}

// Places each pair in its expert's group. The order inside a group depends on atomics; the
// grouped GEMM computes every output element in a fixed order whatever its row, so results
// do not depend on it.
//   cursors: [num_experts] int32, zeroed;  sorted_pairs: [max_tiles * tile_rows] int32, -1 filled
__global__ void moe_scatter_pairs(const int* __restrict__ selected, int num_pairs,
                                  const int* __restrict__ group_begin, int* __restrict__ cursors,
                                  int* __restrict__ sorted_pairs) {
    const int pair = blockIdx.x * blockDim.x + threadIdx.x;
    if (pair >= num_pairs) return;
    const int expert = selected[pair];
    if (expert < 0) return;  // another rank's expert: not in any group
    sorted_pairs[group_begin[expert] + atomicAdd(&cursors[expert], 1)] = pair;
}

// out[t] = sum over slots in rank order of weight * y, the reference's float32 operation order.
// A slot routed to another rank's expert (selected -1) has no y row (never written): its term is
// 0 * weight, as the reference computes it from its zero-filled row (exact zero; NaN stays NaN).
//   expert_out: [num_tokens * k, hidden];  selected, weights: [num_tokens, k];  out: [num_tokens, hidden]
__global__ void moe_combine(const float* __restrict__ expert_out, const int* __restrict__ selected,
                            const float* __restrict__ weights, int num_tokens, int k, int hidden,
                            float* __restrict__ out) {
    const i64 index = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (index >= (i64)num_tokens * hidden) return;
    const i64 token = index / hidden;
    const int col = (int)(index % hidden);
    const float* w = weights + token * k;
    const int* ids = selected + token * k;
    const float* y = expert_out + token * k * hidden + col;
    float acc = __fmul_rn(ids[0] < 0 ? 0.0f : y[0], w[0]);
    for (int slot = 1; slot < k; ++slot)
        acc = __fadd_rn(acc, __fmul_rn(ids[slot] < 0 ? 0.0f : y[(i64)slot * hidden], w[slot]));
    out[index] = acc;
}
