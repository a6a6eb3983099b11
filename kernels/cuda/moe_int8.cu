// Expert GEMVs on q8_32 activation codes for decode and moderate batches: each weight block meets
// an activation block in an exact integer dot (dp4a, dot_q8.cuh), so only the float32 summation
// order differs from the reference. A tile is one expert and up to ROWS (token, slot) pairs routed
// to it; a warp computes one output row of the expert for all the tile's pairs, so the weight row
// is read once per tile. Two ways to make tiles, one kernel:
// - direct (pairs == null, ROWS = 1): tile i is pair i and tile_expert is `selected` itself, so
//   decode needs no sort;
// - grouped: the counting sort of moe_route.cu (groups padded to ROWS, tile_expert from it).
// Every output element sums its blocks in the same lane order and reduces the warp the same way
// whatever the tile, its row in it or the tiling, so results do not depend on the batch.
// Expert parallelism: a pair routed to another rank has expert -1 (direct) or is in no tile
// (grouped): its output row is never written, and moe_combine adds 0 for it.
#include "common.cuh"
#include "dot_q8.cuh"
#include "moe.cuh"

// grid (ceil(num_out / warps_per_cta), num_tiles), a warp per output row.
//   w0_raw, w1_raw: [num_experts, num_out, row_bytes] u8 blocks of TYPE (w1 = up, only when GATE_UP)
//   tile_expert: [num_tiles] int32 local expert or -1
//   pairs:  [num_tiles * ROWS] int32 pair ids (token * k + slot) or -1 (padding); null: pair = tile
//   codes:  [num_act_rows, num_blocks * 32] int8 q8_32 codes; row = pair / act_div
//   scales: [num_act_rows, num_blocks] float32 (fp16-rounded) code scales
//   bias0, bias1: [num_experts, num_out] float32 or null
//   out:    [num_pairs, num_out] float32 (swiglu_oai(w0 . x + b0, w1 . x + b1) when GATE_UP,
//           else w0 . x + b0)
template <int TYPE, int ROWS, int GATE_UP>
__global__ void moe_int8(const u8* __restrict__ w0_raw, const u8* __restrict__ w1_raw, i64 expert_bytes,
                         i64 row_bytes, int num_out, int num_blocks, const int* __restrict__ tile_expert,
                         const int* __restrict__ pairs, const i8* __restrict__ codes,
                         const float* __restrict__ scales, int act_div, const float* __restrict__ bias0,
                         const float* __restrict__ bias1, float alpha, float limit, float* __restrict__ out) {
    constexpr int NUM_W = GATE_UP ? 2 : 1;
    const int warps_per_cta = blockDim.x >> 5;
    const int row = blockIdx.x * warps_per_cta + (threadIdx.x >> 5);
    const int tile = blockIdx.y;
    if (row >= num_out) return;
    const int expert = tile_expert[tile];
    if (expert < 0) return;
    const int lane = threadIdx.x & 31, part = lane & 3;
    int first, second;
    activation_offsets<TYPE>(part, first, second);
    int pair[ROWS], act_row[ROWS];  // -1: padding
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        pair[r] = pairs ? pairs[(i64)tile * ROWS + r] : tile;
        act_row[r] = pair[r] < 0 ? -1 : pair[r] / act_div;
    }
    const u8* w_row[NUM_W];
    w_row[0] = expert_row(w0_raw, expert, expert_bytes, row, row_bytes);
    if (GATE_UP) w_row[NUM_W - 1] = expert_row(w1_raw, expert, expert_bytes, row, row_bytes);
    float acc[NUM_W][ROWS];
#pragma unroll
    for (int w = 0; w < NUM_W; ++w)
#pragma unroll
        for (int r = 0; r < ROWS; ++r) acc[w][r] = 0.0f;
    // Blocks in flight per warp: a single tile row needs several to cover the load latency;
    // with 8 rows the row loop itself has enough independent loads (and registers are dearer).
#pragma unroll (ROWS == 1 ? 4 : 2)
    for (int b = lane >> 2; b < num_blocks; b += 8) {
        DecodedPart wp[NUM_W];  // decoded once for all the tile's pairs
#pragma unroll
        for (int w = 0; w < NUM_W; ++w) wp[w] = decode_part<TYPE>(load_part<TYPE>(w_row[w] + b * BlockShape<TYPE>::bytes, part), part);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            if (act_row[r] < 0) continue;  // warp-uniform
            const i64 block_index = (i64)act_row[r] * num_blocks + b;
            const i8* act = codes + block_index * 32;
            const int a = *reinterpret_cast<const int*>(act + first);
            const int c = *reinterpret_cast<const int*>(act + second);
            const float dx = scales[block_index];
#pragma unroll
            for (int w = 0; w < NUM_W; ++w) acc[w][r] += dot_decoded<TYPE>(wp[w], a, c, dx);
        }
    }
    const i64 bias_index = (i64)expert * num_out + row;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        if (pair[r] < 0) continue;  // warp-uniform
        const float v0 = warp_sum(acc[0][r]);
        const float total0 = bias0 ? v0 + bias0[bias_index] : v0;
        float result = total0;
        if (GATE_UP) {
            const float v1 = warp_sum(acc[NUM_W - 1][r]);
            result = swiglu_oai(total0, bias1 ? v1 + bias1[bias_index] : v1, alpha, limit);
        }
        if (lane == 0) out[(i64)pair[r] * num_out + row] = result;
    }
}
