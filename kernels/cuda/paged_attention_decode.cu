// Paged attention for decode batches (every sequence has exactly one query row), split along the
// context ("flash decoding"): a batch of one sequence has only num_heads (query row, head) pairs,
// far too few CTAs to fill the GPU, so each pair's keys are cut into `num_splits` ranges that
// separate CTAs score. A second kernel merges the partial softmax states. Same semantics as
// paged_attention.cu (causal, GQA, sliding window, sinks, softcap); float32 math.
//
// Split kernel: CTA (row, head, split), 128 threads. Keys go in tiles of 128 (a thread scores one
// key); then the 4 warps share the tile's keys for the weighted value sum (warp w takes keys
// w, w+4, ...; lane l owns features l, l+32, ...), so every value row is one coalesced load and
// the per-key loop is 4x shorter than one thread walking all keys.
#include "attention_common.cuh"

#define MAX_HEAD_DIM 256
#define KEY_TILE 128
#define NUM_WARPS (KEY_TILE / 32)
#define FEATURES_PER_LANE (MAX_HEAD_DIM / 32)

//   q:            [num_rows, num_heads, head_dim] float32 (row s belongs to sequence s)
//   k_cache/v_cache: [num_blocks, block_size, num_kv_heads, head_dim] fp16 bits
//   context_lens: [num_rows] int32; block_tables: [num_rows, max_blocks_per_seq] int32
//   part_acc:     [num_rows, num_heads, num_splits, head_dim] float32: unnormalized sums
//   part_max/part_sum: [num_rows, num_heads, num_splits] float32: running max and denominator
__global__ void attention_decode_split(const float* __restrict__ q, const u16* __restrict__ k_cache,
                                       const u16* __restrict__ v_cache, const int* __restrict__ context_lens,
                                       const int* __restrict__ block_tables, int max_blocks_per_seq,
                                       int num_heads, int num_kv_heads, int head_dim, int block_size,
                                       float scale, int sliding_window, float softcap,
                                       float* __restrict__ part_acc, float* __restrict__ part_max,
                                       float* __restrict__ part_sum) {
    __shared__ float q_shared[MAX_HEAD_DIM];
    __shared__ float weights[KEY_TILE];
    __shared__ i64 key_offsets[KEY_TILE];
    __shared__ float scratch[32];
    __shared__ float merge[NUM_WARPS][MAX_HEAD_DIM];

    const int row = blockIdx.x, head = blockIdx.y, split = blockIdx.z, num_splits = gridDim.z;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int kv_head = head / (num_heads / num_kv_heads);
    const int context_len = context_lens[row];
    const int query_pos = context_len - 1;
    const int first_key = sliding_window > 0 ? max(0, query_pos - sliding_window + 1) : 0;
    const int num_keys = max(0, query_pos - first_key + 1);
    const int keys_per_split = (num_keys + num_splits - 1) / num_splits;
    const int begin = first_key + split * keys_per_split;
    const int end = min(query_pos + 1, begin + keys_per_split);
    const int* table = block_tables + (i64)row * max_blocks_per_seq;
    const i64 token_stride = (i64)num_kv_heads * head_dim;

    const float* q_row = q + ((i64)row * num_heads + head) * head_dim;
    for (int d = tid; d < head_dim; d += blockDim.x) q_shared[d] = q_row[d];
    float running_max = neg_infinity(), running_sum = 0.0f;
    float acc[FEATURES_PER_LANE];
#pragma unroll
    for (int i = 0; i < FEATURES_PER_LANE; ++i) acc[i] = 0.0f;
    __syncthreads();

    for (int tile = begin; tile < end; tile += KEY_TILE) {
        const int key = tile + tid;
        float score = neg_infinity();
        if (key < end) {
            const i64 offset = key_offset(table, key, block_size, token_stride, kv_head, head_dim);
            key_offsets[tid] = offset;
            score = key_score(q_shared, k_cache, offset, head_dim, scale, softcap);
        }
        const float tile_max = block_max(score, scratch);
        const float new_max = fmaxf(running_max, tile_max);
        const float weight = key < end ? expf(score - new_max) : 0.0f;
        weights[tid] = weight;
        const float correction = expf(running_max - new_max);  // exp(-inf) = 0 on the first tile
        running_sum = running_sum * correction + block_sum(weight, scratch);  // block_sum syncs
        running_max = new_max;
        const int keys_in_tile = min(KEY_TILE, end - tile);
#pragma unroll
        for (int i = 0; i < FEATURES_PER_LANE; ++i) acc[i] *= correction;
#pragma unroll 4
        for (int j = warp; j < keys_in_tile; j += NUM_WARPS) {  // unrolled: value loads in flight together
            const float w = weights[j];
            const u16* v_row = v_cache + key_offsets[j];
#pragma unroll
            for (int i = 0; i < FEATURES_PER_LANE; ++i) {
                const int d = lane + 32 * i;
                if (d < head_dim) acc[i] += w * half_to_float(v_row[d]);
            }
        }
        __syncthreads();  // weights / key_offsets are rewritten by the next tile
    }
#pragma unroll
    for (int i = 0; i < FEATURES_PER_LANE; ++i) {
        const int d = lane + 32 * i;
        if (d < head_dim) merge[warp][d] = acc[i];
    }
    __syncthreads();
    const i64 part = ((i64)row * num_heads + head) * num_splits + split;
    for (int d = tid; d < head_dim; d += blockDim.x) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < NUM_WARPS; ++w) sum += merge[w][d];
        part_acc[part * head_dim + d] = sum;
    }
    if (tid == 0) {
        part_max[part] = running_max;  // -inf for an empty split
        part_sum[part] = running_sum;
    }
}

// One CTA per (row, head): out = sum_s acc_s * e^(max_s - M) / (sum_s sum_s * e^(max_s - M)
// [+ e^(sink - M)]), M the largest max (and sink). A row with no keys gets zeros. The per-split
// factors go through shared memory once, so the feature loop issues independent loads only.
//   out: [num_rows, num_heads, head_dim] float32; sinks: [num_heads] float32 or null
#define MAX_SPLITS 32
__global__ void attention_decode_combine(const float* __restrict__ part_acc, const float* __restrict__ part_max,
                                         const float* __restrict__ part_sum, const float* __restrict__ sinks,
                                         int num_heads, int num_splits, int head_dim, float* __restrict__ out) {
    __shared__ float maxes[MAX_SPLITS], sums[MAX_SPLITS], factors[MAX_SPLITS];
    __shared__ float inverse_denominator;
    const int row_head = blockIdx.x, head = row_head % num_heads, tid = threadIdx.x;
    if (tid < num_splits) {
        maxes[tid] = part_max[(i64)row_head * num_splits + tid];
        sums[tid] = part_sum[(i64)row_head * num_splits + tid];
    }
    __syncthreads();
    if (tid == 0) {
        float global_max = sinks ? sinks[head] : neg_infinity();
        for (int s = 0; s < num_splits; ++s) global_max = fmaxf(global_max, maxes[s]);
        float denominator = sinks ? expf(sinks[head] - global_max) : 0.0f;
        for (int s = 0; s < num_splits; ++s) {
            factors[s] = sums[s] > 0.0f ? expf(maxes[s] - global_max) : 0.0f;
            denominator += sums[s] * factors[s];
        }
        inverse_denominator = denominator > 0.0f ? 1.0f / denominator : 0.0f;
    }
    __syncthreads();
    const float* acc = part_acc + (i64)row_head * num_splits * head_dim;
    for (int d = tid; d < head_dim; d += blockDim.x) {
        float value = 0.0f;
        for (int s = 0; s < num_splits; ++s) value += acc[(i64)s * head_dim + d] * factors[s];
        out[(i64)row_head * head_dim + d] = value * inverse_denominator;
    }
}
