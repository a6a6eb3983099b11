// Fused dequantize-GEMV for small batches (decode) over the 32-value block formats, on q8_32
// activation codes: each product of a weight block and an activation block is an exact integer
// dot (dp4a) times the two scales, as in ggml's vec_dot_q*_q8 kernels, so only the float
// summation order differs from the NumPy reference. Two entry points with the same dot loop:
// gemv_int8 reads codes made beforehand (quantize_q8_32, or a producer's Q8Activations);
// gemv_int8_fused makes them itself in shared memory from float activations (plain, or SwiGLU /
// GeGLU of a [gate | up] input), saving that launch. Both give the same bits.
#include "dot_q8.cuh"
#include "gated.cuh"
#include "q8_32.cuh"

// acc[t] += weight block b (the lane's part w) . token t's activation block b, for every token.
//   codes: [NUM_TOKENS, num_blocks * 32] int8;  scales: [NUM_TOKENS, num_blocks] float32
//   (global memory or the fused kernel's shared copy: same layout)
template <int TYPE, int NUM_TOKENS>
__device__ __forceinline__ void accumulate_block(float (&acc)[NUM_TOKENS], const WeightPart& w, int part,
                                                 int first, int second, int b, int num_blocks,
                                                 const i8* codes, const float* scales) {
    const DecodedPart d = decode_part<TYPE>(w, part);  // once for all the tokens
#pragma unroll
    for (int t = 0; t < NUM_TOKENS; ++t) {
        const i8* act = codes + ((i64)t * num_blocks + b) * 32;
        const int a = *reinterpret_cast<const int*>(act + first);
        const int c = *reinterpret_cast<const int*>(act + second);
        acc[t] += dot_decoded<TYPE>(d, a, c, scales[(i64)t * num_blocks + b]);
    }
}

// The warp's row sums, plus bias, into column `row` of each token's output row (lane 0 writes).
template <int NUM_TOKENS>
__device__ __forceinline__ void store_row(const float (&acc)[NUM_TOKENS], int row, const float* __restrict__ bias,
                                          float* __restrict__ out, i64 out_stride) {
#pragma unroll
    for (int t = 0; t < NUM_TOKENS; ++t) {
        const float total = warp_sum(acc[t]);
        if ((threadIdx.x & 31) == 0) out[t * out_stride + row] = bias ? total + bias[row] : total;
    }
}

// One warp per output row, all NUM_TOKENS tokens at once (the weight row is read once).
//   weight: [num_rows, row_bytes] u8 blocks of TYPE (32 values a block)
//   codes:  [NUM_TOKENS, num_blocks * 32] int8;  scales: [NUM_TOKENS, num_blocks] float32
//   bias:   [num_rows] float32 or null
//   out:    [NUM_TOKENS, out_stride] float32; row r of the weight lands in column r
template <int TYPE, int NUM_TOKENS>
__global__ void gemv_int8(const u8* __restrict__ weight, i64 row_bytes, int num_rows, int num_blocks,
                          const i8* __restrict__ codes, const float* __restrict__ scales,
                          const float* __restrict__ bias, float* __restrict__ out, i64 out_stride) {
    const int warps_per_cta = blockDim.x >> 5;
    const int row = blockIdx.x * warps_per_cta + (threadIdx.x >> 5);
    if (row >= num_rows) return;
    const int lane = threadIdx.x & 31, part = lane & 3;
    int first, second;
    activation_offsets<TYPE>(part, first, second);
    const u8* weight_row = weight + row * row_bytes;
    float acc[NUM_TOKENS];
#pragma unroll
    for (int t = 0; t < NUM_TOKENS; ++t) acc[t] = 0.0f;
#pragma unroll 4
    for (int b = lane >> 2; b < num_blocks; b += 8) {  // unrolled: several blocks' loads in flight
        const WeightPart w = load_part<TYPE>(weight_row + b * BlockShape<TYPE>::bytes, part);
        accumulate_block<TYPE, NUM_TOKENS>(acc, w, part, first, second, b, num_blocks, codes, scales);
    }
    store_row<NUM_TOKENS>(acc, row, bias, out, out_stride);
}

#define GEMV_INPUT_FLOAT 0   // x: [NUM_TOKENS, num_cols] float32 activations
#define GEMV_INPUT_SWIGLU 1  // x: [NUM_TOKENS, 2 * num_cols] float32 gate | up; silu(gate) * up
#define GEMV_INPUT_GEGLU 2   // the same with gelu_tanh(gate) * up

// Weight blocks per lane loaded before the rounding phase: at 8 blocks a warp step, 4 cover a
// row of up to 1024 values (a small model's o projection: all of it) and cost ~16 registers.
#define GEMV_PREFETCH 4
// 32-blocks of input a warp loads at once in the rounding phase (their latencies overlap).
#define GEMV_ROUND_BATCH 4

// gemv_int8 on float activations: each CTA first rounds the whole input (all NUM_TOKENS rows)
// to q8_32 codes in shared memory with store_q8_32, the function quantize_q8_32 and the
// producers use, so the codes, and then the result, are bit-identical to quantize_q8_32 +
// gemv_int8 (or gated_activation + gemv_int8). Every CTA repeats the rounding: launchers keep it
// to small inputs (linear.fuses_input_rounding). The weight's first blocks are loaded before
// that phase, so their latency overlaps it.
//   x:      see GEMV_INPUT_*; rows contiguous
//   dynamic shared memory: NUM_TOKENS * num_blocks * 36 bytes (scales, then codes)
//   other arguments as for gemv_int8
template <int TYPE, int NUM_TOKENS, int INPUT>
__global__ void gemv_int8_fused(const u8* __restrict__ weight, i64 row_bytes, int num_rows, int num_blocks,
                                const float* __restrict__ x, const float* __restrict__ bias,
                                float* __restrict__ out, i64 out_stride) {
    extern __shared__ float shared[];
    float* scales = shared;                                              // [NUM_TOKENS, num_blocks]
    i8* codes = reinterpret_cast<i8*>(shared + NUM_TOKENS * num_blocks);  // [NUM_TOKENS, num_blocks * 32]
    const int warps_per_cta = blockDim.x >> 5, warp = threadIdx.x >> 5;
    const int row = blockIdx.x * warps_per_cta + warp;
    const bool has_row = row < num_rows;  // a warp without a row still helps round, then exits
    const int lane = threadIdx.x & 31, part = lane & 3;
    const u8* weight_row = weight + (i64)(has_row ? row : 0) * row_bytes;

    WeightPart ahead[GEMV_PREFETCH];
#pragma unroll
    for (int k = 0; k < GEMV_PREFETCH; ++k) {
        const int b = (lane >> 2) + 8 * k;
        if (has_row && b < num_blocks) ahead[k] = load_part<TYPE>(weight_row + b * BlockShape<TYPE>::bytes, part);
    }

    // A warp per 32-block of input (block index i = token * num_blocks + column block), all its
    // loads issued before any rounding. `i < total` is warp-uniform: store_q8_32's shuffles see
    // a converged warp.
    const int total = NUM_TOKENS * num_blocks, num_cols = num_blocks * 32;
    for (int base = warp; base < total; base += GEMV_ROUND_BATCH * warps_per_cta) {
        float gate[GEMV_ROUND_BATCH], up[GEMV_ROUND_BATCH];
#pragma unroll
        for (int k = 0; k < GEMV_ROUND_BATCH; ++k) {
            const int i = base + k * warps_per_cta;
            if (i >= total) continue;
            if (INPUT == GEMV_INPUT_FLOAT) {
                gate[k] = x[(i64)i * 32 + lane];
            } else {
                const int token = i / num_blocks, col = (i - token * num_blocks) * 32 + lane;
                const float* gate_up = x + (i64)token * 2 * num_cols;
                gate[k] = gate_up[col];
                up[k] = gate_up[num_cols + col];
            }
        }
#pragma unroll
        for (int k = 0; k < GEMV_ROUND_BATCH; ++k) {
            const int i = base + k * warps_per_cta;
            if (i >= total) continue;
            const float v = INPUT == GEMV_INPUT_FLOAT ? gate[k] : gated_value<INPUT == GEMV_INPUT_GEGLU>(gate[k], up[k]);
            store_q8_32(v, (i64)i * 32 + lane, i, codes, scales);
        }
    }
    __syncthreads();
    if (!has_row) return;

    int first, second;
    activation_offsets<TYPE>(part, first, second);
    float acc[NUM_TOKENS];
#pragma unroll
    for (int t = 0; t < NUM_TOKENS; ++t) acc[t] = 0.0f;
    // Blocks in gemv_int8's order (lane >> 2, then every 8th): the same float sums.
#pragma unroll
    for (int k = 0; k < GEMV_PREFETCH; ++k) {
        const int b = (lane >> 2) + 8 * k;
        if (b < num_blocks) accumulate_block<TYPE, NUM_TOKENS>(acc, ahead[k], part, first, second, b, num_blocks, codes, scales);
    }
#pragma unroll 4
    for (int b = (lane >> 2) + 8 * GEMV_PREFETCH; b < num_blocks; b += 8) {
        const WeightPart w = load_part<TYPE>(weight_row + b * BlockShape<TYPE>::bytes, part);
        accumulate_block<TYPE, NUM_TOKENS>(acc, w, part, first, second, b, num_blocks, codes, scales);
    }
    store_row<NUM_TOKENS>(acc, row, bias, out, out_stride);
}
