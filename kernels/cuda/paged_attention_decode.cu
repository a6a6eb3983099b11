// Paged attention for decode batches (every sequence has exactly one query row). Same semantics
// as paged_attention.cu (causal, GQA, sliding window, sinks, softcap); float32 math.
//
// A CTA takes one (row, KV head) and up to HEADS query heads of that KV head's GQA group: the
// heads of a group read the same keys and values, so each K/V row is loaded once for all of
// them. Its warps split the keys (warp w takes the 32-key tiles w, w + NUM_WARPS, ...; a lane
// scores one key for every head), keep a softmax state per head, and merge their states in
// shared memory. One launch covers a context of a few thousand keys with no combine kernel.
//
// When the batch has few (row, KV head) pairs, the context is also split across gridDim.z CTAs
// (flash decoding). gridDim.z comes from the batch shape alone (a CUDA graph replays one launch
// for every context length); the keys each split takes come from the context length on the
// device, so short contexts leave trailing splits empty and those CTAs exit at once. Each active
// split writes its partial state; the last one to finish (an atomic ticket per (row, CTA column),
// reset by that CTA so the counters are zero again for the next launch) merges them in split
// order. Merging in a fixed order from the buffer, whichever CTA comes last, keeps a row's result
// independent of scheduling and of the other rows.
#include "attention_common.cuh"

#define WARP_KEYS 32
#define MAX_SPLITS 32  // = MAX_DECODE_SPLITS of attention.py

// A load from L2, skipping L1: L1 is not coherent with the writes other SMs made.
__device__ __forceinline__ float load_from_l2(const float* address) {
    float value;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(value) : "l"(address));
    return value;
}

// Factors that merge `count` softmax states (max, sum) of one head, read at maxes[i * stride].
// State i is weighted by factors[i]. With `normalize`, the factors also divide by the merged
// denominator including the sink's term (a sink of -inf is no sink): the weighted sum is then the
// attention output. Without it, merged_max/merged_sum describe the merged, unnormalized state.
// States with sum 0 saw no keys; a head with no keys at all gets zero factors (zero output).
__device__ void merge_factors(const float* maxes, const float* sums, int count, int stride, float sink,
                              bool normalize, float* factors, float* merged_max, float* merged_sum) {
    float max_all = sink;
    for (int i = 0; i < count; ++i) {
        if (sums[i * stride] > 0.0f) max_all = fmaxf(max_all, maxes[i * stride]);
    }
    float denominator = sink > neg_infinity() ? expf(sink - max_all) : 0.0f;
    for (int i = 0; i < count; ++i) {
        const float sum = sums[i * stride];
        factors[i] = sum > 0.0f ? expf(maxes[i * stride] - max_all) : 0.0f;
        denominator += sum * factors[i];
    }
    if (normalize) {
        const float inverse = denominator > 0.0f ? 1.0f / denominator : 0.0f;
        for (int i = 0; i < count; ++i) factors[i] *= inverse;
    }
    *merged_max = max_all;
    *merged_sum = denominator;
}

// scale * (q . k) for every head of the CTA against one K row (one lane, one key), then the
// optional softcap. q rows are read as shared-memory broadcasts (every lane the same address).
// With head_dim % 8 == 0, up to 64 features of the row are loaded before the first product: one
// memory round trip per key for head_dim <= 64, two for 128.
template <int HEADS, int MAX_DIM>
__device__ __forceinline__ void score_key(const float (*q_shared)[MAX_DIM], const u16* k_row_start,
                                          int head_dim, float scale, float softcap, float* score) {
    float dot[HEADS];
#pragma unroll
    for (int h = 0; h < HEADS; ++h) dot[h] = 0.0f;
    if ((head_dim & 7) == 0) {
        // 16-byte loads in flight at once: 32 registers, 16 where 8+ heads' dots need the room
        constexpr int CHUNK = HEADS * (MAX_DIM / 64) >= 8 ? 4 : MAX_DIM <= 64 ? MAX_DIM / 8 : 8;
        const uint4* k_row = reinterpret_cast<const uint4*>(k_row_start);  // 16-byte aligned
        for (int base = 0; base < head_dim / 8; base += CHUNK) {
            uint4 packs[CHUNK];
#pragma unroll
            for (int c = 0; c < CHUNK; ++c) {
                if (base + c < head_dim / 8) packs[c] = k_row[base + c];
            }
#pragma unroll
            for (int c = 0; c < CHUNK; ++c) {
                const int d8 = base + c;
                if (d8 >= head_dim / 8) break;
                const u32 words[4] = {packs[c].x, packs[c].y, packs[c].z, packs[c].w};
                float key[8];
#pragma unroll
                for (int w = 0; w < 4; ++w) {
                    key[2 * w] = half_to_float((u16)(words[w] & 0xFFFF));
                    key[2 * w + 1] = half_to_float((u16)(words[w] >> 16));
                }
#pragma unroll
                for (int h = 0; h < HEADS; ++h) {
                    const float4 qa = *reinterpret_cast<const float4*>(&q_shared[h][8 * d8]);
                    const float4 qb = *reinterpret_cast<const float4*>(&q_shared[h][8 * d8 + 4]);
                    dot[h] += qa.x * key[0] + qa.y * key[1] + qa.z * key[2] + qa.w * key[3] +
                              qb.x * key[4] + qb.y * key[5] + qb.z * key[6] + qb.w * key[7];
                }
            }
        }
    } else {
        const u32* k_row = reinterpret_cast<const u32*>(k_row_start);  // head_dim is even
#pragma unroll 4
        for (int d2 = 0; d2 < head_dim / 2; ++d2) {
            const u32 pair = k_row[d2];
            const float k0 = half_to_float((u16)(pair & 0xFFFF)), k1 = half_to_float((u16)(pair >> 16));
#pragma unroll
            for (int h = 0; h < HEADS; ++h) dot[h] += q_shared[h][2 * d2] * k0 + q_shared[h][2 * d2 + 1] * k1;
        }
    }
#pragma unroll
    for (int h = 0; h < HEADS; ++h) {
        score[h] = dot[h] * scale;
        if (softcap > 0.0f) score[h] = softcap * tanhf(score[h] / softcap);
    }
}

// Lane l's feature pairs (2l, 2l+1 of every 64) of the V rows of keys first..first+V_KEYS-1 of
// the warp's tile; slot = the lane's own key's cache slot, shuffled to every lane. Keys past the
// tile load as zeros (their weight is 0 too, and uninitialized cache bits could be NaN).
template <int V_KEYS, int PAIRS>
__device__ __forceinline__ void load_values(const u16* v_cache, int slot, int first, int keys_in_tile,
                                            i64 token_stride, i64 head_offset, int head_dim, int lane,
                                            u32 (&values)[V_KEYS][PAIRS]) {
#pragma unroll
    for (int j = 0; j < V_KEYS; ++j) {
        const int key_slot = __shfl_sync(0xffffffffu, slot, first + j);
        const u32* v_row = reinterpret_cast<const u32*>(v_cache + key_slot * token_stride + head_offset);
#pragma unroll
        for (int p = 0; p < PAIRS; ++p) {
            values[j][p] = first + j < keys_in_tile && 64 * p + 2 * lane < head_dim ? v_row[32 * p + lane] : 0u;
        }
    }
}

// HEADS: query heads per CTA (a power of two >= the group, or 8 with several CTAs per group);
// PAIRS: feature pairs per lane in the value sum (lane l owns features 2l, 2l+1 of every 64), so
// head_dim <= 64 * PAIRS; NUM_WARPS: warps sharing the keys. attention.py picks all three.
//   q:             [num_rows, num_heads, head_dim] float32 (row s belongs to sequence s)
//   k_cache/v_cache: [num_blocks, block_size, num_kv_heads, head_dim] fp16 bits
//   context_lens:  [num_rows] int32; block_tables: [num_rows, max_blocks_per_seq] int32
//   sinks:         [num_heads] float32 or null
//   part_acc:      [num_rows, num_heads, gridDim.z, head_dim] float32 (unused if gridDim.z == 1)
//   part_max/part_sum: [num_rows, num_heads, gridDim.z] float32 (idem)
//   split_counters: [num_rows * gridDim.y] int32, zero before and after every launch
//   out:           [num_rows, num_heads, head_dim] float32
template <int HEADS, int PAIRS, int NUM_WARPS>
__global__ void __launch_bounds__(NUM_WARPS * 32, 2)
attention_decode(const float* __restrict__ q, const u16* __restrict__ k_cache, const u16* __restrict__ v_cache,
                 const int* __restrict__ context_lens, const int* __restrict__ block_tables,
                 int max_blocks_per_seq, int num_heads, int num_kv_heads, int head_dim, int block_size,
                 float scale, int sliding_window, float softcap, const float* __restrict__ sinks,
                 int min_keys_per_split, float* part_acc, float* part_max, float* part_sum,
                 int* split_counters, float* __restrict__ out) {
    constexpr int MAX_DIM = 64 * PAIRS;
    constexpr int MAX_STATES = NUM_WARPS > MAX_SPLITS ? NUM_WARPS : MAX_SPLITS;
    __shared__ __align__(16) float q_shared[HEADS][MAX_DIM];
    // The key tiles' weights are dead once the warps hand over their accumulators.
    __shared__ __align__(16) union {
        float weights[NUM_WARPS][HEADS][WARP_KEYS];  // float4-read in the value sum
        float warp_acc[NUM_WARPS][HEADS][MAX_DIM];
    } tiles;
    __shared__ float warp_state_max[NUM_WARPS][HEADS], warp_state_sum[NUM_WARPS][HEADS];
    __shared__ float split_max[MAX_SPLITS][HEADS], split_sum[MAX_SPLITS][HEADS];
    __shared__ float factors[HEADS][MAX_STATES], merged_max[HEADS], merged_sum[HEADS];
    __shared__ bool is_last_split;

    const int row = blockIdx.x, split = blockIdx.z, num_splits = gridDim.z;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int group = num_heads / num_kv_heads, ctas_per_group = (group + HEADS - 1) / HEADS;
    const int kv_head = blockIdx.y / ctas_per_group, group_first = (blockIdx.y % ctas_per_group) * HEADS;
    const int first_head = kv_head * group + group_first, heads_here = min(HEADS, group - group_first);

    // q goes to shared memory first: its loads are then in flight with the context length's.
    // Heads past the group (a group of 3 in a CTA of 4) score against zeros and are never written.
    for (int i = tid; i < HEADS * MAX_DIM; i += NUM_WARPS * 32) {
        const int h = i / MAX_DIM, d = i % MAX_DIM;
        q_shared[h][d] = h < heads_here && d < head_dim ? q[((i64)row * num_heads + first_head + h) * head_dim + d]
                                                        : 0.0f;
    }
    const int context_len = context_lens[row];
    const int query_pos = context_len - 1;
    const int first_key = sliding_window > 0 ? max(0, query_pos - sliding_window + 1) : 0;
    const int num_keys = max(0, query_pos - first_key + 1);
    // Whole warp tiles per split, and never under min_keys_per_split: a split's fixed cost (its
    // partial state and the merge) only pays off over enough keys.
    const int even_share = ((num_keys + num_splits - 1) / num_splits + WARP_KEYS - 1) / WARP_KEYS * WARP_KEYS;
    const int keys_per_split = max(min_keys_per_split, even_share);
    const int active_splits = max(1, (num_keys + keys_per_split - 1) / keys_per_split);
    if (split >= active_splits) return;  // no keys here; the ticket counts active splits only
    const int begin = first_key + split * keys_per_split;
    const int end = min(query_pos + 1, begin + keys_per_split);
    const int* table = block_tables + (i64)row * max_blocks_per_seq;
    const i64 token_stride = (i64)num_kv_heads * head_dim;

    __syncthreads();

    float running_max[HEADS], lane_sum[HEADS], acc[HEADS][PAIRS][2];
#pragma unroll
    for (int h = 0; h < HEADS; ++h) {
        running_max[h] = neg_infinity();
        lane_sum[h] = 0.0f;  // this lane's share of the denominator, summed over the warp at the end
#pragma unroll
        for (int p = 0; p < PAIRS; ++p) acc[h][p][0] = acc[h][p][1] = 0.0f;
    }

    // V rows are loaded V_KEYS at a time (32 registers or fewer where many heads' accumulators
    // need them), the first batch together with the K rows: with one head pair per lane a tile
    // then waits for memory once after its table lookup (the old loop waited about six times).
    constexpr int V_REGISTERS = HEADS * PAIRS >= 8 ? 8 : HEADS * PAIRS >= 4 ? 16 : 32;
    constexpr int V_KEYS = V_REGISTERS / PAIRS < 4 ? 4 : V_REGISTERS / PAIRS;  // the sum takes 4 keys a step
    constexpr int V_CHUNKS = WARP_KEYS / V_KEYS;
    const i64 head_offset = (i64)kv_head * head_dim;
    for (int tile = begin + warp * WARP_KEYS; tile < end; tile += NUM_WARPS * WARP_KEYS) {
        const int key = tile + lane;
        const bool is_valid = key < end;
        const int keys_in_tile = min(WARP_KEYS, end - tile);
        const int slot = is_valid ? table[key / block_size] * block_size + key % block_size : 0;
        u32 values[V_KEYS][PAIRS];
        load_values<V_KEYS, PAIRS>(v_cache, slot, 0, keys_in_tile, token_stride, head_offset, head_dim, lane, values);
        float score[HEADS];
        if (is_valid) score_key<HEADS, MAX_DIM>(q_shared, k_cache + slot * token_stride + head_offset, head_dim,
                                                scale, softcap, score);
#pragma unroll
        for (int h = 0; h < HEADS; ++h) {
            // The tile has at least one valid key, so new_max is finite and the correction of the
            // first tile is exp(-inf) = 0 on an all-zero accumulator.
            const float new_max = fmaxf(running_max[h], warp_max(is_valid ? score[h] : neg_infinity()));
            const float correction = expf(running_max[h] - new_max);
            const float weight = is_valid ? expf(score[h] - new_max) : 0.0f;
            running_max[h] = new_max;
            lane_sum[h] = lane_sum[h] * correction + weight;
            tiles.weights[warp][h][lane] = weight;
#pragma unroll
            for (int p = 0; p < PAIRS; ++p) {
                acc[h][p][0] *= correction;
                acc[h][p][1] *= correction;
            }
        }
        __syncwarp();
#pragma unroll 1  // rolled: an unrolled loop would hoist every chunk's loads into registers at once
        for (int chunk = 0; chunk < V_CHUNKS; ++chunk) {
            if (chunk > 0) {
                if (chunk * V_KEYS >= keys_in_tile) break;
                load_values<V_KEYS, PAIRS>(v_cache, slot, chunk * V_KEYS, keys_in_tile, token_stride, head_offset,
                                           head_dim, lane, values);
            }
#pragma unroll
            for (int j4 = 0; j4 < V_KEYS; j4 += 4) {
                float v[4][PAIRS][2];
#pragma unroll
                for (int jj = 0; jj < 4; ++jj) {
#pragma unroll
                    for (int p = 0; p < PAIRS; ++p) {
                        v[jj][p][0] = half_to_float((u16)(values[j4 + jj][p] & 0xFFFF));
                        v[jj][p][1] = half_to_float((u16)(values[j4 + jj][p] >> 16));
                    }
                }
#pragma unroll
                for (int h = 0; h < HEADS; ++h) {  // four keys' weights per shared-memory read
                    const float4 w = *reinterpret_cast<const float4*>(&tiles.weights[warp][h][chunk * V_KEYS + j4]);
                    const float ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
                    for (int jj = 0; jj < 4; ++jj) {
#pragma unroll
                        for (int p = 0; p < PAIRS; ++p) {
                            acc[h][p][0] += ws[jj] * v[jj][p][0];
                            acc[h][p][1] += ws[jj] * v[jj][p][1];
                        }
                    }
                }
            }
        }
        __syncwarp();  // the next tile rewrites this warp's weights
    }
    __syncthreads();  // warp_acc overlays the key tiles other warps may still be reading

#pragma unroll
    for (int h = 0; h < HEADS; ++h) {
        const float sum = warp_sum(lane_sum[h]);
        if (lane == 0) {
            warp_state_max[warp][h] = running_max[h];
            warp_state_sum[warp][h] = sum;  // 0 for a warp that got no keys
        }
#pragma unroll
        for (int p = 0; p < PAIRS; ++p) {
            tiles.warp_acc[warp][h][64 * p + 2 * lane] = acc[h][p][0];
            tiles.warp_acc[warp][h][64 * p + 2 * lane + 1] = acc[h][p][1];
        }
    }
    __syncthreads();
    const bool is_single = active_splits == 1;
    if (tid < heads_here) {
        const float sink = sinks && is_single ? sinks[first_head + tid] : neg_infinity();
        merge_factors(&warp_state_max[0][tid], &warp_state_sum[0][tid], NUM_WARPS, HEADS, sink, is_single, factors[tid],
                      &merged_max[tid], &merged_sum[tid]);
    }
    __syncthreads();

    const i64 part_base = ((i64)row * num_heads + first_head) * num_splits + split;
    for (int i = tid; i < heads_here * head_dim; i += NUM_WARPS * 32) {
        const int h = i / head_dim, d = i % head_dim;
        float value = 0.0f;
#pragma unroll
        for (int w = 0; w < NUM_WARPS; ++w) value += tiles.warp_acc[w][h][d] * factors[h][w];
        if (is_single) out[((i64)row * num_heads + first_head) * head_dim + i] = value;
        else part_acc[(part_base + (i64)h * num_splits) * head_dim + d] = value;
    }
    if (is_single) return;
    if (tid < heads_here) {
        part_max[part_base + (i64)tid * num_splits] = merged_max[tid];
        part_sum[part_base + (i64)tid * num_splits] = merged_sum[tid];
    }

    // Publish the partial state device-wide before taking a ticket (threadFenceReduction pattern).
    __threadfence();
    __syncthreads();
    int* counter = split_counters + (i64)row * gridDim.y + blockIdx.y;
    if (tid == 0) {
        const int ticket = atomicAdd(counter, 1);
        is_last_split = ticket == active_splits - 1;
        if (is_last_split) *counter = 0;  // every active split has counted: ready for the next launch
    }
    __syncthreads();
    if (!is_last_split) return;
    __threadfence();

    // The other splits' states were written by other SMs: read them from L2.
    for (int i = tid; i < heads_here * active_splits; i += NUM_WARPS * 32) {
        const int h = i / active_splits, s = i % active_splits;
        const i64 part = ((i64)row * num_heads + first_head + h) * num_splits + s;
        split_max[s][h] = load_from_l2(part_max + part);
        split_sum[s][h] = load_from_l2(part_sum + part);
    }
    __syncthreads();
    if (tid < heads_here) {
        const float sink = sinks ? sinks[first_head + tid] : neg_infinity();
        merge_factors(&split_max[0][tid], &split_sum[0][tid], active_splits, HEADS, sink, true, factors[tid],
                      &merged_max[tid], &merged_sum[tid]);
    }
    __syncthreads();
    for (int i = tid; i < heads_here * head_dim; i += NUM_WARPS * 32) {
        const int h = i / head_dim, d = i % head_dim;
        const float* acc_h = part_acc + ((i64)row * num_heads + first_head + h) * num_splits * head_dim + d;
        float value = 0.0f;
        for (int s = 0; s < active_splits; ++s) value += load_from_l2(acc_h + (i64)s * head_dim) * factors[h][s];
        out[((i64)row * num_heads + first_head) * head_dim + i] = value;
    }
}
