// Grouped GEMM on tensor cores for MXFP4 experts meeting q8_32 activations (gpt-oss), the same
// contract as moe_grouped.cu (row tiles of one expert each, from the device counting sort).
// Exact products: per 32-wide block an int8 mma (m16n8k32, int32 accumulation) multiplies the
// activations' q8 codes by the weights' E2M1 values doubled (integers -12..12, dot_q8.cuh), so
// the block's sum is an exact integer (|sum| <= 32 x 127 x 12 < 2^24, exact in float32 too);
// it is scaled by (activation scale x 2^(e - 128)) and added in fp32. The result equals the
// reference's products (each exact in float32) up to float32 summation order, and a row's output
// does not depend on the tile size or on the other rows of its tile.
// No shared memory: the m16n8k32 fragments match the block layouts as they lie in global memory.
// A lane (g = lane / 4, t = lane % 4) needs B[k][g] for k = 4t..4t+3 and 16+4t..16+4t+3, which
// are the low and high nibbles of qs[4t..4t+3] of column g's block: one 4-byte load; and
// A[g or g+8][4t..4t+3 and 16+4t..], four 4-byte loads of the row's q8 codes. The last version
// staged both through shared memory as fp16 and spent its time converting and storing them
// (1.1 ms for a 64-token gate+up on the H100 against ~0.1 ms of weight traffic).
// Expert parallelism: as in moe_grouped.cu, expert ids are local and the pairs routed to other
// ranks were left out by the sort.
#include "common.cuh"
#include "dot_q8.cuh"
#include "moe.cuh"
#include "moe_mma.cuh"

#define MMA_TILE_N 64   // columns of a CTA: 8 warps x 8
#define MMA_THREADS 256

// One warp's registers for GB consecutive blocks: its weight bytes and its activation fragments.
template <int ROWS, int NUM_W, int GB>
struct Group {
    u32 packed[NUM_W][GB];       // qs[4t..4t+3] of column g's block
    u32 exponent[NUM_W][GB];     // column g's E8M0 byte
    int a[ROWS][GB][4];          // A fragment: codes of rows g, g+8 (of each 16), k 4t.. and 16+4t..
    float a_scale[ROWS][GB][2];  // code scales of rows g and g+8; 0 for a block past the end
};

// TILE_M = 16 * ROWS (16 or 64) rows x MMA_TILE_N columns a CTA; warp w owns columns 8w..8w+7
// of the tile for all TILE_M rows (and for both gate and up when GATE_UP, so SwiGLU is applied
// in registers). grid (num_row_tiles, ceil(num_out / MMA_TILE_N)), block MMA_THREADS.
//   w0_raw, w1_raw: [num_experts, num_out, row_bytes] MXFP4 blocks (w1 = up, only when GATE_UP)
//   tile_expert: [num_row_tiles] int32 local expert or -1;  sorted_pairs: [num_row_tiles * TILE_M] int32 or -1
//   codes:  [num_act_rows, num_blocks * 32] int8 q8_32 codes; row = pair / act_div
//   scales: [num_act_rows, num_blocks] float32 (fp16-rounded) code scales
//   bias0, bias1: [num_experts, num_out] float32 or null;  out: [num_pairs, num_out] float32
// Rows without a pair and columns past num_out read row 0 / column num_out - 1 (real memory) and
// are never stored, so the loads need no predicates.
// GB: blocks a warp loads ahead of its mma (one group in flight while the previous one is used;
// moe.py MMA_GROUP_BLOCKS).
template <int GATE_UP, int ROWS, int GB>
__global__ void __launch_bounds__(MMA_THREADS, ROWS == 1 ? 2 : 1)
moe_grouped_mxfp4_mma(const u8* __restrict__ w0_raw, const u8* __restrict__ w1_raw, i64 expert_bytes,
                      i64 row_bytes, int num_out, int num_blocks, const int* __restrict__ tile_expert,
                      const int* __restrict__ sorted_pairs, const i8* __restrict__ codes,
                      const float* __restrict__ scales, int act_div, const float* __restrict__ bias0,
                      const float* __restrict__ bias1, float alpha, float limit, float* __restrict__ out) {
    constexpr int NUM_W = GATE_UP ? 2 : 1;
    constexpr int TILE_M = 16 * ROWS;
    using GroupT = Group<ROWS, NUM_W, GB>;
    const int expert = tile_expert[blockIdx.x];
    if (expert < 0) return;  // whole CTA
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int warp_col = blockIdx.y * MMA_TILE_N + 8 * warp;
    const i64 num_cols = (i64)num_blocks * 32;
    const u8* w_row[NUM_W];
#pragma unroll
    for (int w = 0; w < NUM_W; ++w)
        w_row[w] = expert_row(w == 0 ? w0_raw : w1_raw, expert, expert_bytes, min(warp_col + g, num_out - 1), row_bytes);
    int src[ROWS][2];  // activation rows of tile rows 16r + g + 8h
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int pair = sorted_pairs[(i64)blockIdx.x * TILE_M + 16 * r + g + 8 * h];
            src[r][h] = pair < 0 ? 0 : pair / act_div;
        }

    auto load_group = [&](int first_block, GroupT& grp) {
#pragma unroll
        for (int b = 0; b < GB; ++b) {
            const bool is_real = first_block + b < num_blocks;
            const int block = is_real ? first_block + b : num_blocks - 1;
#pragma unroll
            for (int w = 0; w < NUM_W; ++w) {
                const u8* blk = w_row[w] + 17 * block;
                grp.exponent[w][b] = __ldg(blk);
                grp.packed[w][b] = load_u32_unaligned(blk + 1 + 4 * t);
            }
#pragma unroll
            for (int r = 0; r < ROWS; ++r)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const i8* row = codes + src[r][h] * num_cols + 32 * block + 4 * t;
                    grp.a[r][b][h] = __ldg(reinterpret_cast<const int*>(row));
                    grp.a[r][b][2 + h] = __ldg(reinterpret_cast<const int*>(row + 16));
                    grp.a_scale[r][b][h] = is_real ? __ldg(scales + src[r][h] * (i64)num_blocks + block) : 0.0f;
                }
        }
    };

    float acc[NUM_W][ROWS][4];  // C fragment: rows g, g+8 (of each 16) x columns 2t, 2t+1 of the warp
#pragma unroll
    for (int w = 0; w < NUM_W; ++w)
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[w][r][i] = 0.0f;
    GroupT next;
    load_group(0, next);
    for (int first_block = 0; first_block < num_blocks; first_block += GB) {
        const GroupT cur = next;
        if (first_block + GB < num_blocks) load_group(first_block + GB, next);
#pragma unroll
        for (int b = 0; b < GB; ++b)
#pragma unroll
            for (int w = 0; w < NUM_W; ++w) {
                int b_lo, b_hi;  // B fragment: values 4t.. (low nibbles) and 16 + 4t.. (high nibbles)
                mxfp4_to_int8x8(cur.packed[w][b], b_lo, b_hi);
                // The scales of the C fragment's columns 2t, 2t+1 come from the lanes loading them.
                const float own_scale = e8m0_half_scale(cur.exponent[w][b]);
                const float w_scale[2] = {__shfl_sync(0xffffffffu, own_scale, 8 * t),
                                          __shfl_sync(0xffffffffu, own_scale, 8 * t + 4)};
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    int block_sum[4] = {0, 0, 0, 0};
                    mma_m16n8k32_s8(block_sum, cur.a[r][b], b_lo, b_hi);
#pragma unroll
                    for (int i = 0; i < 4; ++i)
                        acc[w][r][i] += (float)block_sum[i] * __fmul_rn(cur.a_scale[r][b][i >> 1], w_scale[i & 1]);
                }
            }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int pair = sorted_pairs[(i64)blockIdx.x * TILE_M + 16 * r + g + 8 * (i >> 1)];
            const int col = warp_col + 2 * t + (i & 1);
            if (pair < 0 || col >= num_out) continue;
            const i64 bias_index = (i64)expert * num_out + col;
            const float v0 = bias0 ? acc[0][r][i] + bias0[bias_index] : acc[0][r][i];
            float result = v0;
            if (GATE_UP) {
                const float v1 = bias1 ? acc[NUM_W - 1][r][i] + bias1[bias_index] : acc[NUM_W - 1][r][i];
                result = swiglu_oai(v0, v1, alpha, limit);
            }
            out[(i64)pair * num_out + col] = result;
        }
}
