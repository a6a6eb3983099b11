// Activation rounding as ggml does it before a quantized matmul (see kernels/reference/linear.py):
// q8_32 (blocks of 32, fp16 scale: Q4_0/Q4_1/Q5_x/Q8_0/MXFP4 weights), q8_256 (blocks of 256,
// fp32 scale: k-quants), f16, bf16, none. Two outputs: the rounded values as floats (or fp16
// for the cuBLAS path), and for the int8 GEMV the q8_32 codes with their scales.

#include "q8_32.cuh"

#define ROUND_NONE 0
#define ROUND_F16 1
#define ROUND_BF16 2
#define ROUND_Q8_32 3
#define ROUND_Q8_256 4

// blockDim.x = 256, grid (ceil(num_cols / 256), num_rows). Q8_256 needs num_cols % 256 == 0,
// Q8_32 needs num_cols % 32 == 0.
//   x:   [num_rows, num_cols] float32
//   out: [num_rows, num_cols] float32 (OUT_HALF=0) or fp16 bits (OUT_HALF=1)
template <int MODE, int OUT_HALF>
__global__ void round_activations(const float* __restrict__ x, int num_cols, void* __restrict__ out) {
    __shared__ float scratch[32];
    const int col = blockIdx.x * 256 + threadIdx.x;
    const i64 index = (i64)blockIdx.y * num_cols + col;
    const bool inside = col < num_cols;
    const float v = inside ? x[index] : 0.0f;
    float r = v;
    if (MODE == ROUND_F16) {
        r = round_to_half(v);
    } else if (MODE == ROUND_BF16) {
        const u32 bits = __float_as_uint(v);
        r = __uint_as_float((bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u);
    } else if (MODE == ROUND_Q8_32) {
        const float scale = warp_max(fabsf(v)) / 127.0f;
        r = __fmul_rn(q8_code(v, scale), round_to_half(scale));
    } else if (MODE == ROUND_Q8_256) {
        const float scale = block_max(fabsf(v), scratch) / 127.0f;
        r = __fmul_rn(q8_code(v, scale), scale);
    }
    if (!inside) return;
    if (OUT_HALF) reinterpret_cast<u16*>(out)[index] = float_to_half(r);
    else reinterpret_cast<float*>(out)[index] = r;
}

// The q8_32 codes and fp16-rounded scales the int8 GEMV multiplies with. One warp per block of 32.
//   x:      [num_rows, num_cols] float32, num_cols % 32 == 0
//   codes:  [num_rows, num_cols] int8
//   scales: [num_rows, num_cols / 32] float32 (the fp16 scale, widened)
__global__ void quantize_q8_32(const float* __restrict__ x, i64 num_blocks,
                               i8* __restrict__ codes, float* __restrict__ scales) {
    const i64 block = (blockIdx.x * (i64)blockDim.x + threadIdx.x) >> 5;
    if (block >= num_blocks) return;  // whole warps exit together: num_blocks counts warps
    const i64 index = block * 32 + (threadIdx.x & 31);
    store_q8_32(x[index], index, block, codes, scales);
}
