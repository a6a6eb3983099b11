// Dequantize whole rows of a GGUF weight: the embedding gather (selected rows, float32 out)
// and the dequantize-to-fp16 tiles that feed cuBLAS for large batches (a row range).
#include "common.cuh"
#include "quant_blocks.cuh"

// One thread per 32-value chunk; blockIdx.y walks output rows.
//   raw:     [num_weight_rows, row_bytes] u8, GGUF blocks of TYPE
//   row_ids: [num_out_rows] int32 (rows to gather) or null (rows first_row + y)
//   out:     [num_out_rows, num_cols] float32 (OUT_HALF=0) or fp16 bits (OUT_HALF=1)
template <int TYPE, int OUT_HALF>
__global__ void dequantize_rows(const u8* __restrict__ raw, i64 row_bytes,
                                const int* __restrict__ row_ids, i64 first_row, int num_out_rows,
                                int num_cols, void* __restrict__ out) {
    const int chunk = blockIdx.x * blockDim.x + threadIdx.x;
    const int out_row = blockIdx.y;
    if (chunk * 32 >= num_cols || out_row >= num_out_rows) return;
    const i64 src_row = row_ids ? (i64)row_ids[out_row] : first_row + out_row;
    float values[32];
    dequant_chunk32<TYPE>(raw + src_row * row_bytes, chunk, values);
    const i64 base = (i64)out_row * num_cols + 32 * chunk;
    if (OUT_HALF) {
        u16* dst = reinterpret_cast<u16*>(out) + base;
#pragma unroll
        for (int i = 0; i < 32; ++i) dst[i] = float_to_half(values[i]);
    } else {
        float* dst = reinterpret_cast<float*>(out) + base;
#pragma unroll
        for (int i = 0; i < 32; ++i) dst[i] = values[i];
    }
}
