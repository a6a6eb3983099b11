// Paged attention over the fp16 KV cache for a ragged batch (prefill chunks and decodes alike):
// causal, grouped-query, optional sliding window, attention sinks and logit softcap. Float32
// math with an online softmax, so any context length runs in one pass.
//
// One CTA per (query row, head). Keys go in tiles of blockDim.x: each thread scores one key,
// then the CTA rescales its running output and adds the tile's weighted values, a thread per
// output feature. Correctness first: splitting long decode contexts across CTAs and sharing
// K/V loads among the heads of a group are the next optimizations.
#include "attention_common.cuh"

#define MAX_HEAD_DIM 256
#define KEY_TILE 128

// Sequence owning query row `row`: the last s with query_start[s] <= row.
__device__ __forceinline__ int sequence_of(const int* query_start, int num_seqs, int row) {
    int lo = 0, hi = num_seqs - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (query_start[mid] <= row) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// blockDim.x == KEY_TILE.
//   q:            [num_tokens, num_heads, head_dim] float32 (contiguous)
//   k_cache/v_cache: [num_blocks, block_size, num_kv_heads, head_dim] fp16 bits
//   query_start:  [num_seqs + 1] int32;  context_lens: [num_seqs] int32
//   block_tables: [num_seqs, max_blocks_per_seq] int32
//   sinks:        [num_heads] float32 or null
//   out:          [num_tokens, num_heads, head_dim] float32
__global__ void paged_attention(const float* __restrict__ q, const u16* __restrict__ k_cache,
                                const u16* __restrict__ v_cache, const int* __restrict__ query_start,
                                const int* __restrict__ context_lens, const int* __restrict__ block_tables,
                                int max_blocks_per_seq, int num_seqs, int num_heads, int num_kv_heads,
                                int head_dim, int block_size, float scale, int sliding_window,
                                const float* __restrict__ sinks, float softcap, float* __restrict__ out) {
    __shared__ float q_shared[MAX_HEAD_DIM];
    __shared__ float weights[KEY_TILE];
    __shared__ i64 key_offsets[KEY_TILE];
    __shared__ float scratch[32];

    const int row = blockIdx.x, head = blockIdx.y, tid = threadIdx.x;
    const int kv_head = head / (num_heads / num_kv_heads);
    const int seq = sequence_of(query_start, num_seqs, row);
    const int context_len = context_lens[seq];
    const int query_len = query_start[seq + 1] - query_start[seq];
    const int query_pos = context_len - query_len + (row - query_start[seq]);
    const int first_key = sliding_window > 0 ? max(0, query_pos - sliding_window + 1) : 0;
    const int* table = block_tables + (i64)seq * max_blocks_per_seq;
    const i64 token_stride = (i64)num_kv_heads * head_dim;  // elements between two cache slots

    const float* q_row = q + ((i64)row * num_heads + head) * head_dim;
    for (int d = tid; d < head_dim; d += blockDim.x) q_shared[d] = q_row[d];

    // Running softmax state; a sink acts as one extra logit with no value.
    float running_max = sinks ? sinks[head] : neg_infinity();
    float running_sum = sinks ? 1.0f : 0.0f;
    float acc[MAX_HEAD_DIM / KEY_TILE] = {0.0f, 0.0f};
    __syncthreads();

    for (int tile = first_key; tile <= query_pos; tile += KEY_TILE) {
        const int key = tile + tid;
        float score = neg_infinity();
        if (key <= query_pos) {
            const i64 offset = key_offset(table, key, block_size, token_stride, kv_head, head_dim);
            key_offsets[tid] = offset;
            score = key_score(q_shared, k_cache, offset, head_dim, scale, softcap);
        }
        const float tile_max = block_max(score, scratch);
        const float new_max = fmaxf(running_max, tile_max);
        const float weight = key <= query_pos ? expf(score - new_max) : 0.0f;
        weights[tid] = weight;
        const float correction = expf(running_max - new_max);  // exp(-inf) = 0 on the first tile
        running_sum = running_sum * correction + block_sum(weight, scratch);  // block_sum syncs
        running_max = new_max;
        const int keys_in_tile = min(KEY_TILE, query_pos - tile + 1);
#pragma unroll
        for (int i = 0; i < MAX_HEAD_DIM / KEY_TILE; ++i) {
            const int d = tid + i * KEY_TILE;
            if (d >= head_dim) continue;
            float sum = acc[i] * correction;
#pragma unroll 8
            for (int j = 0; j < keys_in_tile; ++j) sum += weights[j] * half_to_float(v_cache[key_offsets[j] + d]);
            acc[i] = sum;
        }
        __syncthreads();  // weights / key_offsets are rewritten by the next tile
    }
    float* out_row = out + ((i64)row * num_heads + head) * head_dim;
#pragma unroll
    for (int i = 0; i < MAX_HEAD_DIM / KEY_TILE; ++i) {
        const int d = tid + i * KEY_TILE;
        if (d < head_dim) out_row[d] = acc[i] / running_sum;
    }
}
