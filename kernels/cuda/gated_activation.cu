// MLP activations: SwiGLU / GeGLU over [gate | up] rows, and plain tanh-GELU elementwise.
#include "gated.cuh"
#include "q8_32.cuh"

//   gate_up: [num_tokens, 2 * ffn] float32, gate columns first;  out: [num_tokens, ffn] float32
//   codes, scales (QUANTIZE only): [num_tokens, ffn] int8 and [num_tokens, ffn / 32] float32, the
//   q8_32 rounding of `out` for the next int8 GEMV. Needs ffn % 32 == 0 and blockDim.x % 32 == 0:
//   each warp then holds one whole 32-block of one row and exits (or not) as a whole.
template <int GELU, int QUANTIZE>
__global__ void gated_activation(const float* __restrict__ gate_up, int num_tokens, int ffn,
                                 float* __restrict__ out, i8* __restrict__ codes, float* __restrict__ scales) {
    const i64 index = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (index >= (i64)num_tokens * ffn) return;
    const i64 token = index / ffn;
    const int col = (int)(index % ffn);
    const float gate = gate_up[token * 2 * ffn + col], up = gate_up[token * 2 * ffn + ffn + col];
    const float activated = gated_value<GELU>(gate, up);
    out[index] = activated;
    if (QUANTIZE) store_q8_32(activated, index, index >> 5, codes, scales);
}

//   x, out: [n] float32
__global__ void gelu(const float* __restrict__ x, i64 n, float* __restrict__ out) {
    const i64 index = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (index < n) out[index] = gelu_tanh(x[index]);
}
