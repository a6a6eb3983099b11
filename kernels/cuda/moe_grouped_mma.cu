// Grouped GEMM on tensor cores for MXFP4 experts meeting q8_32 activations (gpt-oss), the same
// contract as moe_grouped.cu (row tiles of one expert each, from the device counting sort).
// Exact products: per 32-wide block the fp16 mma multiplies the activations' int8 codes by the
// weights' E2M1 values doubled (integers 0..12 with sign), both exact in fp16, and accumulates in
// fp32, where every partial sum is an integer below 2^24 and therefore exact; the block's sum is
// then scaled by (activation scale x 2^(e - 128)) and added in fp32. The result equals the
// reference's products (each exact in float32 too) up to float32 summation order.
// Expert parallelism: as in moe_grouped.cu, expert ids are local and the pairs routed to other
// ranks were left out by the sort.
#include "common.cuh"
#include "dot_q8.cuh"
#include "moe.cuh"
#include "moe_mma.cuh"

#define MMA_TILE_N 64
#define MMA_THREADS 256
#define MMA_STAGE_BLOCKS 2                     // 32-blocks of K per stage: 64 values
#define MMA_STAGE_K (32 * MMA_STAGE_BLOCKS)
#define MMA_K_PAD 8  // a shared row of 64 + 8 halves (144 bytes): fragment loads hit distinct banks

// One stage's global data held in registers by a thread while the tensor cores work on the
// previous stage, then stored to shared memory: the loads of stage s + 1 overlap the mma of s.
// Activations: TILE_M rows x MMA_STAGE_BLOCKS blocks x 8 words of 4 codes; weights: NUM_W x
// MMA_TILE_N rows x MMA_STAGE_BLOCKS blocks x 4 parts of 4 bytes (8 values, dot_q8.cuh layout).
template <int TILE_M, int NUM_W>
struct Stage {
    static constexpr int A_ITEMS = TILE_M * MMA_STAGE_BLOCKS * 8 / MMA_THREADS;        // 1 or 4
    static constexpr int W_ITEMS = NUM_W * MMA_TILE_N * MMA_STAGE_BLOCKS * 4 / MMA_THREADS;  // 2 or 4
    int codes[A_ITEMS];
    float a_scale;  // thread t < TILE_M * MMA_STAGE_BLOCKS: row t / STAGE_BLOCKS's block scale
    u32 nibbles[W_ITEMS];
    u8 exponent[W_ITEMS];  // E8M0 byte of the item's block (read by the part-0 items only)
};

// Where item `index` of a stage lies, the one mapping that loading and storing both use.
//   activations: row of the tile, block of the stage, word of 4 codes in the block
__device__ __forceinline__ void activation_item(int index, int& row, int& block, int& word) {
    row = index / (MMA_STAGE_BLOCKS * 8);
    block = index / 8 % MMA_STAGE_BLOCKS;
    word = index % 8;
}
//   weights: matrix (gate / up), column of the tile, block of the stage, part (8 values) of the block
__device__ __forceinline__ void weight_item(int index, int& w, int& col, int& block, int& part) {
    w = index / (MMA_TILE_N * MMA_STAGE_BLOCKS * 4);
    col = index / (MMA_STAGE_BLOCKS * 4) % MMA_TILE_N;
    block = index / 4 % MMA_STAGE_BLOCKS;
    part = index % 4;
}

// TILE_M = 16 * ROWS (16 or 64). Eight warps: ROWS along M (16 rows each) x 8 / ROWS along N.
// grid (num_row_tiles, ceil(num_out / MMA_TILE_N)), block MMA_THREADS.
//   w0_raw, w1_raw: [num_experts, num_out, row_bytes] MXFP4 blocks (w1 = up, only when GATE_UP)
//   tile_expert: [num_row_tiles] int32 local expert or -1;  sorted_pairs: [num_row_tiles * TILE_M] int32 or -1
//   codes:  [num_act_rows, num_blocks * 32] int8 q8_32 codes; row = pair / act_div
//   scales: [num_act_rows, num_blocks] float32 (fp16-rounded) code scales
//   bias0, bias1: [num_experts, num_out] float32 or null;  out: [num_pairs, num_out] float32
// Two CTAs an SM, except gate+up at 64 rows: its accumulators, per-block partial sums and staged
// loads need ~160 registers (128 spilled ~140 bytes at nvcc sm_90), so it runs one CTA an SM.
template <int GATE_UP, int ROWS>
__global__ void __launch_bounds__(MMA_THREADS, (GATE_UP && ROWS == 4) ? 1 : 2)
moe_grouped_mxfp4_mma(const u8* __restrict__ w0_raw, const u8* __restrict__ w1_raw, i64 expert_bytes,
                      i64 row_bytes, int num_out, int num_blocks, const int* __restrict__ tile_expert,
                      const int* __restrict__ sorted_pairs, const i8* __restrict__ codes,
                      const float* __restrict__ scales, int act_div, const float* __restrict__ bias0,
                      const float* __restrict__ bias1, float alpha, float limit, float* __restrict__ out) {
    constexpr int NUM_W = GATE_UP ? 2 : 1;
    constexpr int TILE_M = 16 * ROWS;
    constexpr int WARPS_M = ROWS;
    constexpr int N_PER_WARP = MMA_TILE_N / (8 / ROWS);  // 32 or 8 columns
    constexpr int N8 = N_PER_WARP / 8;
    using StageT = Stage<TILE_M, NUM_W>;
    __shared__ __align__(16) u16 a_tile[TILE_M][MMA_STAGE_K + MMA_K_PAD];  // fp16 codes [row][k]
    __shared__ __align__(16) u16 w_tile[NUM_W][MMA_TILE_N][MMA_STAGE_K + MMA_K_PAD];  // fp16 2*E2M1 [col][k]
    __shared__ float a_scale[TILE_M][MMA_STAGE_BLOCKS];
    __shared__ float w_scale[NUM_W][MMA_TILE_N][MMA_STAGE_BLOCKS];
    __shared__ int act_rows[TILE_M];
    const int expert = tile_expert[blockIdx.x];
    if (expert < 0) return;  // whole CTA
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int warp_row = (warp % WARPS_M) * 16, warp_col = (warp / WARPS_M) * N_PER_WARP;
    const int col_base = blockIdx.y * MMA_TILE_N;
    const i64 num_cols = (i64)num_blocks * 32;
    for (int row = tid; row < TILE_M; row += MMA_THREADS) {
        const int pair = sorted_pairs[(i64)blockIdx.x * TILE_M + row];
        act_rows[row] = pair < 0 ? -1 : pair / act_div;
    }
    __syncthreads();

    // Item i of a thread is stage item tid + i * MMA_THREADS (activation_item, weight_item):
    // consecutive threads take consecutive words / parts, so a warp's loads cover contiguous
    // spans. Blocks past num_blocks load zeros (their scale is 0).
    auto load_stage = [&](int first_block, StageT& st) {
#pragma unroll
        for (int i = 0; i < StageT::A_ITEMS; ++i) {
            int row, b, word;
            activation_item(tid + i * MMA_THREADS, row, b, word);
            const int block = first_block + b, src = act_rows[row];
            st.codes[i] = src >= 0 && block < num_blocks
                ? *reinterpret_cast<const int*>(codes + src * num_cols + 32 * block + 4 * word) : 0;
        }
        if (tid < TILE_M * MMA_STAGE_BLOCKS) {
            const int row = tid / MMA_STAGE_BLOCKS, block = first_block + tid % MMA_STAGE_BLOCKS;
            const int src = act_rows[row];
            st.a_scale = src >= 0 && block < num_blocks ? scales[src * (i64)num_blocks + block] : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < StageT::W_ITEMS; ++i) {
            int w, col, b, part;
            weight_item(tid + i * MMA_THREADS, w, col, b, part);
            const int block = first_block + b, out_row = col_base + col;
            st.nibbles[i] = 0u;
            st.exponent[i] = 0;
            if (out_row < num_out && block < num_blocks) {
                const u8* blk = expert_row(w == 0 ? w0_raw : w1_raw, expert, expert_bytes, out_row, row_bytes) + 17 * block;
                const WeightPart wp = load_part<GGML_MXFP4>(blk, part);
                st.nibbles[i] = (u32)wp.q0;
                st.exponent[i] = (u8)wp.d;
            }
        }
    };
    auto store_stage = [&](const StageT& st, int first_block) {
#pragma unroll
        for (int i = 0; i < StageT::A_ITEMS; ++i) {
            int row, b, word;
            activation_item(tid + i * MMA_THREADS, row, b, word);
            const int k = 32 * b + 4 * word;
#pragma unroll
            for (int j = 0; j < 4; ++j) a_tile[row][k + j] = float_to_half((float)(i8)(st.codes[i] >> (8 * j)));
        }
        if (tid < TILE_M * MMA_STAGE_BLOCKS) a_scale[tid / MMA_STAGE_BLOCKS][tid % MMA_STAGE_BLOCKS] = st.a_scale;
#pragma unroll
        for (int i = 0; i < StageT::W_ITEMS; ++i) {
            int w, col, b, part;
            weight_item(tid + i * MMA_THREADS, w, col, b, part);
            const int lo = mxfp4_to_int8x4(st.nibbles[i] & 0x0F0F0F0Fu);        // values 4 part + j
            const int hi = mxfp4_to_int8x4((st.nibbles[i] >> 4) & 0x0F0F0F0Fu);  // values 16 + 4 part + j
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                w_tile[w][col][32 * b + 4 * part + j] = float_to_half((float)(i8)(lo >> (8 * j)));
                w_tile[w][col][32 * b + 16 + 4 * part + j] = float_to_half((float)(i8)(hi >> (8 * j)));
            }
            // 2^(e - 128) for the doubled values; 0 for a column or block past the end.
            const bool is_real = col_base + col < num_out && first_block + b < num_blocks;
            if (part == 0) w_scale[w][col][b] = is_real ? e8m0_half_scale(st.exponent[i]) : 0.0f;
        }
    };

    float acc[NUM_W][N8][4];
#pragma unroll
    for (int w = 0; w < NUM_W; ++w)
#pragma unroll
        for (int n = 0; n < N8; ++n)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[w][n][i] = 0.0f;
    StageT next;
    load_stage(0, next);
    for (int first_block = 0; first_block < num_blocks; first_block += MMA_STAGE_BLOCKS) {
        store_stage(next, first_block);
        __syncthreads();
        if (first_block + MMA_STAGE_BLOCKS < num_blocks) load_stage(first_block + MMA_STAGE_BLOCKS, next);
#pragma unroll
        for (int b = 0; b < MMA_STAGE_BLOCKS; ++b) {
            float part[NUM_W][N8][4];
#pragma unroll
            for (int w = 0; w < NUM_W; ++w)
#pragma unroll
                for (int n = 0; n < N8; ++n)
#pragma unroll
                    for (int i = 0; i < 4; ++i) part[w][n][i] = 0.0f;
#pragma unroll
            for (int k0 = 32 * b; k0 < 32 * b + 32; k0 += 16) {
                u32 a[4];
                a[0] = *reinterpret_cast<const u32*>(&a_tile[warp_row + g][k0 + 2 * t]);
                a[1] = *reinterpret_cast<const u32*>(&a_tile[warp_row + g + 8][k0 + 2 * t]);
                a[2] = *reinterpret_cast<const u32*>(&a_tile[warp_row + g][k0 + 2 * t + 8]);
                a[3] = *reinterpret_cast<const u32*>(&a_tile[warp_row + g + 8][k0 + 2 * t + 8]);
#pragma unroll
                for (int w = 0; w < NUM_W; ++w)
#pragma unroll
                    for (int n = 0; n < N8; ++n) {
                        const int col = warp_col + 8 * n + g;
                        u32 bf[2];
                        bf[0] = *reinterpret_cast<const u32*>(&w_tile[w][col][k0 + 2 * t]);
                        bf[1] = *reinterpret_cast<const u32*>(&w_tile[w][col][k0 + 2 * t + 8]);
                        mma_m16n8k16(part[w][n], a, bf);
                    }
            }
            // Blocks past num_blocks have scale 0 and zero codes: they add exact zeros.
#pragma unroll
            for (int w = 0; w < NUM_W; ++w)
#pragma unroll
                for (int n = 0; n < N8; ++n)
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        const int row = warp_row + g + (i >> 1) * 8, col = warp_col + 8 * n + 2 * t + (i & 1);
                        acc[w][n][i] += part[w][n][i] * __fmul_rn(a_scale[row][b], w_scale[w][col][b]);
                    }
        }
        __syncthreads();
    }
#pragma unroll
    for (int n = 0; n < N8; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int row = warp_row + g + (i >> 1) * 8;
            const int col = col_base + warp_col + 8 * n + 2 * t + (i & 1);
            const int pair = sorted_pairs[(i64)blockIdx.x * TILE_M + row];
            if (pair < 0 || col >= num_out) continue;
            const i64 bias_index = (i64)expert * num_out + col;
            const float v0 = bias0 ? acc[0][n][i] + bias0[bias_index] : acc[0][n][i];
            float result = v0;
            if (GATE_UP) {
                const float v1 = bias1 ? acc[NUM_W - 1][n][i] + bias1[bias_index] : acc[NUM_W - 1][n][i];
                result = swiglu_oai(v0, v1, alpha, limit);
            }
            out[(i64)pair * num_out + col] = result;
        }
}
