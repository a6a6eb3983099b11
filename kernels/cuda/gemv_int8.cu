// Fused dequantize-GEMV for small batches (decode) over the 32-value block formats, with
// activations already rounded to q8_32 codes (quantize_q8_32): each product of a weight block
// and an activation block is an exact integer dot (dp4a) times the two scales, as in ggml's
// vec_dot_q*_q8 kernels, so only the float summation order differs from the NumPy reference.
#include "common.cuh"
#include "quant_blocks.cuh"

// A warp covers 8 blocks per step: 4 lanes a block, 8 values a lane. For the nibble formats
// lane part p owns values {4p..4p+3} (low nibbles of qs[4p..4p+3]) and {16+4p..16+4p+3} (their
// high nibbles); for Q8_0 it owns values 8p..8p+7.
template <int TYPE>
__device__ __forceinline__ void activation_offsets(int part, int& first, int& second) {
    if (TYPE == GGML_Q8_0) { first = 8 * part; second = 8 * part + 4; }
    else { first = 4 * part; second = 16 + 4 * part; }
}

// One lane's share of block (weight) x block (activation): returns the float contribution.
//   a, b: the lane's 8 activation codes as two packed int8x4 words; dx: the activation scale.
template <int TYPE>
__device__ __forceinline__ float dot_part(const u8* block, int part, int a, int b, float dx) {
    const int ones = 0x01010101;
    if (TYPE == GGML_Q8_0) {
        const int w0 = load_i32_2aligned(block + 2 + 8 * part);
        const int w1 = load_i32_2aligned(block + 2 + 8 * part + 4);
        const int dot = __dp4a(w0, a, __dp4a(w1, b, 0));
        return __fmul_rn(half_to_float(load_u16(block)), dx) * (float)dot;
    }
    const bool has_min = TYPE == GGML_Q4_1 || TYPE == GGML_Q5_1;
    const bool has_high = TYPE == GGML_Q5_0 || TYPE == GGML_Q5_1;
    const int qs_offset = (has_min ? 4 : 2) + (has_high ? 4 : 0);
    const u32 packed = (u32)load_i32_2aligned(block + qs_offset + 4 * part);
    int lo = (int)(packed & 0x0F0F0F0Fu);
    int hi = (int)((packed >> 4) & 0x0F0F0F0Fu);
    if (has_high) {
        const u32 qh = (u32)load_i32_2aligned(block + (has_min ? 4 : 2));
        const u32 lo_bits = qh >> (4 * part), hi_bits = qh >> (16 + 4 * part);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            lo |= (int)(((lo_bits >> i) & 1u) << (8 * i + 4));
            hi |= (int)(((hi_bits >> i) & 1u) << (8 * i + 4));
        }
    }
    const int dot = __dp4a(lo, a, __dp4a(hi, b, 0));
    const int act_sum = __dp4a(ones, a, __dp4a(ones, b, 0));
    const float d = half_to_float(load_u16(block));
    if (has_min) {
        const float m = half_to_float(load_u16(block + 2));
        return __fmul_rn(d, dx) * (float)dot + __fmul_rn(m, dx) * (float)act_sum;
    }
    const int zero = has_high ? 16 : 8;
    return __fmul_rn(d, dx) * (float)(dot - zero * act_sum);
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
    const int num_cols = num_blocks * 32;
    float acc[NUM_TOKENS];
#pragma unroll
    for (int t = 0; t < NUM_TOKENS; ++t) acc[t] = 0.0f;
#pragma unroll 4
    for (int b = lane >> 2; b < num_blocks; b += 8) {  // unrolled: several blocks' loads in flight
        const u8* block = weight_row + b * BlockShape<TYPE>::bytes;
#pragma unroll
        for (int t = 0; t < NUM_TOKENS; ++t) {
            const i8* act = codes + (i64)t * num_cols + 32 * b;
            const int a = *reinterpret_cast<const int*>(act + first);
            const int c = *reinterpret_cast<const int*>(act + second);
            acc[t] += dot_part<TYPE>(block, part, a, c, scales[(i64)t * num_blocks + b]);
        }
    }
#pragma unroll
    for (int t = 0; t < NUM_TOKENS; ++t) {
        const float total = warp_sum(acc[t]);
        if (lane == 0) out[t * out_stride + row] = bias ? total + bias[row] : total;
    }
}
