// Grouped GEMM over the selected experts, for large batches (prefill). The (token, slot) pairs
// were counting-sorted by expert into a fixed-size row buffer whose expert groups start on
// multiples of TILE_M (moe_route.cu), so each row tile belongs to one expert (tile_expert, -1 for
// unused tiles). A CTA computes a TILE_M x TILE_N output tile: per 32-wide K step it gathers its
// rows' activations and dequantizes one GGUF block per weight row into shared memory (float32),
// then every thread accumulates a ROWS x 4 sub-tile. Each output element is a float32 sum over K in
// a fixed order whatever its row position, so the atomically ordered groups give reproducible
// results. The gate/up variant keeps both accumulators and applies the clamped SwiGLU in the
// epilogue, so the [pairs, ffn] gate and up matrices never exist in memory.
// Expert parallelism: the tensors hold the rank's experts only and tile_expert holds local ids;
// the sort left out the pairs routed to other ranks, so no tile carries them (moe_route.cu).
#include "common.cuh"
#include "quant_blocks.cuh"
#include "moe.cuh"

#define TILE_N 64
#define TILE_PAD 4  // shared rows of TILE + 4 floats keep 16-byte alignment and spread the banks
#define GROUPED_THREADS 256

// TILE_M = 16 * ROWS (ROWS = 1 or 4): a thread owns ROWS x 4 outputs. Small tiles waste less
// on the padding of small expert groups (moderate batches); large ones reuse each dequantized
// weight block for more rows. The launcher picks ROWS from (num_pairs, num_experts) only.
// grid (num_row_tiles, ceil(num_out / TILE_N)), block GROUPED_THREADS.
//   w0_raw:  [num_experts, num_out, row_bytes] u8 blocks of TYPE (gate, or down); the rank's experts
//   w1_raw:  same shape (up) when GATE_UP, else unused
//   tile_expert:  [num_row_tiles] int32 local expert of each row tile or -1
//   sorted_pairs: [num_row_tiles * TILE_M] int32 pair ids (token * k + slot) or -1 (padding)
//   act:     [num_act_rows, num_chunks * 32] float32 rounded activations; row = pair / act_div
//   bias0, bias1: [num_experts, num_out] float32 or null
//   out:     [num_pairs, num_out] float32 (h = swiglu(gate, up) when GATE_UP, else down + bias)
template <int TYPE, int GATE_UP, int ROWS>
__global__ void __launch_bounds__(GROUPED_THREADS, 2)
moe_grouped(const u8* __restrict__ w0_raw, const u8* __restrict__ w1_raw, i64 expert_bytes, i64 row_bytes,
            int num_out, int num_chunks, const int* __restrict__ tile_expert,
            const int* __restrict__ sorted_pairs, const float* __restrict__ act, int act_div,
            const float* __restrict__ bias0, const float* __restrict__ bias1, float alpha, float limit,
            float* __restrict__ out) {
    constexpr int NUM_W = GATE_UP ? 2 : 1;
    constexpr int TILE_M = 16 * ROWS;
    __shared__ __align__(16) float a_tile[32][TILE_M + TILE_PAD];        // [k][row], 16-byte rows
    __shared__ __align__(16) float w_tile[NUM_W][32][TILE_N + TILE_PAD];  // [weight][k][col]
    __shared__ int act_rows[TILE_M];
    const int expert = tile_expert[blockIdx.x];
    if (expert < 0) return;  // whole CTA: no barrier is skipped by part of it
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int col_base = blockIdx.y * TILE_N;
    const i64 num_cols = (i64)num_chunks * 32;
    if (tid < TILE_M) {
        const int pair = sorted_pairs[(i64)blockIdx.x * TILE_M + tid];
        act_rows[tid] = pair < 0 ? -1 : pair / act_div;
    }
    float acc[NUM_W][ROWS][4];
#pragma unroll
    for (int w = 0; w < NUM_W; ++w)
#pragma unroll
        for (int i = 0; i < ROWS; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[w][i][j] = 0.0f;
    __syncthreads();
    for (int chunk = 0; chunk < num_chunks; ++chunk) {
        for (int item = tid; item < TILE_M * 8; item += GROUPED_THREADS) {  // activations, float4 each
            const int row = item >> 3, part = (item & 7) * 4;
            const int src = act_rows[row];
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (src >= 0) v = *reinterpret_cast<const float4*>(act + src * num_cols + 32 * chunk + part);
            a_tile[part + 0][row] = v.x; a_tile[part + 1][row] = v.y;
            a_tile[part + 2][row] = v.z; a_tile[part + 3][row] = v.w;
        }
        if (tid < NUM_W * TILE_N) {  // weights: one thread dequantizes one row's 32-value block
            const int w = tid / TILE_N, col = tid % TILE_N, out_row = col_base + col;
            float values[32];
            if (out_row < num_out) {
                dequant_chunk32<TYPE>(expert_row(w == 0 ? w0_raw : w1_raw, expert, expert_bytes, out_row,
                                                 row_bytes), chunk, values);
            } else {
#pragma unroll
                for (int i = 0; i < 32; ++i) values[i] = 0.0f;
            }
#pragma unroll
            for (int i = 0; i < 32; ++i) w_tile[w][i][col] = values[i];
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < 32; ++kk) {
            float av[ROWS];
#pragma unroll
            for (int i = 0; i < ROWS; ++i) av[i] = a_tile[kk][ty * ROWS + i];
#pragma unroll
            for (int w = 0; w < NUM_W; ++w) {
                const float4 b = *reinterpret_cast<const float4*>(&w_tile[w][kk][tx * 4]);
                const float bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
                for (int i = 0; i < ROWS; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[w][i][j] += av[i] * bv[j];
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < ROWS; ++i) {
        const int pair = sorted_pairs[(i64)blockIdx.x * TILE_M + ty * ROWS + i];
        if (pair < 0) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = col_base + tx * 4 + j;
            if (col >= num_out) continue;
            const i64 bias_index = (i64)expert * num_out + col;
            const float v0 = bias0 ? acc[0][i][j] + bias0[bias_index] : acc[0][i][j];
            float result = v0;
            if (GATE_UP) {
                const float v1 = bias1 ? acc[NUM_W - 1][i][j] + bias1[bias_index] : acc[NUM_W - 1][i][j];
                result = swiglu_oai(v0, v1, alpha, limit);
            }
            out[(i64)pair * num_out + col] = result;
        }
    }
}
