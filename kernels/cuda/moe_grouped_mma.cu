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
#include "quant_blocks.cuh"
#include "moe.cuh"
#include "moe_mma.cuh"

#define MMA_TILE_N 64
#define MMA_THREADS 256
#define MMA_K_PAD 8  // a shared row of 32 + 8 halves (80 bytes): fragment loads hit distinct banks

// TILE_M = 16 * ROWS (16 or 64). Eight warps: ROWS along M (16 rows each) x 8 / ROWS along N.
// grid (num_row_tiles, ceil(num_out / MMA_TILE_N)), block MMA_THREADS.
//   w0_raw, w1_raw: [num_experts, num_out, row_bytes] MXFP4 blocks (w1 = up, only when GATE_UP)
//   tile_expert: [num_row_tiles] int32 local expert or -1;  sorted_pairs: [num_row_tiles * TILE_M] int32 or -1
//   codes:  [num_act_rows, num_blocks * 32] int8 q8_32 codes; row = pair / act_div
//   scales: [num_act_rows, num_blocks] float32 (fp16-rounded) code scales
//   bias0, bias1: [num_experts, num_out] float32 or null;  out: [num_pairs, num_out] float32
template <int GATE_UP, int ROWS>
__global__ void __launch_bounds__(MMA_THREADS, 2)
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
    __shared__ __align__(16) u16 a_tile[TILE_M][32 + MMA_K_PAD];  // fp16 codes [row][k]
    __shared__ __align__(16) u16 w_tile[NUM_W][MMA_TILE_N][32 + MMA_K_PAD];  // fp16 2*E2M1 [col][k]
    __shared__ float a_scale[TILE_M];
    __shared__ float w_scale[NUM_W][MMA_TILE_N];
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
    float acc[NUM_W][N8][4];
#pragma unroll
    for (int w = 0; w < NUM_W; ++w)
#pragma unroll
        for (int n = 0; n < N8; ++n)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[w][n][i] = 0.0f;
    __syncthreads();
    for (int block = 0; block < num_blocks; ++block) {
        for (int item = tid; item < TILE_M * 8; item += MMA_THREADS) {  // 4 codes each
            const int row = item >> 3, part = (item & 7) * 4, src = act_rows[row];
            const int packed = src >= 0 ? *reinterpret_cast<const int*>(codes + src * num_cols + 32 * block + part) : 0;
#pragma unroll
            for (int j = 0; j < 4; ++j) a_tile[row][part + j] = float_to_half((float)(i8)(packed >> (8 * j)));
        }
        for (int row = tid; row < TILE_M; row += MMA_THREADS) {
            const int src = act_rows[row];
            a_scale[row] = src >= 0 ? scales[src * (i64)num_blocks + block] : 0.0f;
        }
        if (tid < NUM_W * MMA_TILE_N) {  // one thread decodes one weight row's block
            const int w = tid / MMA_TILE_N, col = tid % MMA_TILE_N, out_row = col_base + col;
            if (out_row < num_out) {
                const u8* blk = expert_row(w == 0 ? w0_raw : w1_raw, expert, expert_bytes, out_row, row_bytes) + 17 * block;
                w_scale[w][col] = ldexpf(1.0f, (int)blk[0] - 128);
#pragma unroll
                for (int j = 0; j < 16; ++j) {
                    const int byte = blk[1 + j];
                    w_tile[w][col][j] = float_to_half(2.0f * e2m1_value(byte & 0x0F));
                    w_tile[w][col][j + 16] = float_to_half(2.0f * e2m1_value(byte >> 4));
                }
            } else {
                w_scale[w][col] = 0.0f;
#pragma unroll
                for (int j = 0; j < 32; ++j) w_tile[w][col][j] = 0;
            }
        }
        __syncthreads();
        float part[NUM_W][N8][4];
#pragma unroll
        for (int w = 0; w < NUM_W; ++w)
#pragma unroll
            for (int n = 0; n < N8; ++n)
#pragma unroll
                for (int i = 0; i < 4; ++i) part[w][n][i] = 0.0f;
#pragma unroll
        for (int k0 = 0; k0 < 32; k0 += 16) {
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
                    u32 b[2];
                    b[0] = *reinterpret_cast<const u32*>(&w_tile[w][col][k0 + 2 * t]);
                    b[1] = *reinterpret_cast<const u32*>(&w_tile[w][col][k0 + 2 * t + 8]);
                    mma_m16n8k16(part[w][n], a, b);
                }
        }
#pragma unroll
        for (int w = 0; w < NUM_W; ++w)
#pragma unroll
            for (int n = 0; n < N8; ++n)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int row = warp_row + g + (i >> 1) * 8, col = warp_col + 8 * n + 2 * t + (i & 1);
                    acc[w][n][i] += part[w][n][i] * __fmul_rn(a_scale[row], w_scale[w][col]);
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
