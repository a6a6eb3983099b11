// Dequantize whole rows of a GGUF weight: the embedding gather (selected rows, float32 out)
// and the dequantize-to-fp16 tiles that feed cuBLAS for large batches (a row range).
#include "common.cuh"
#include "quant_blocks.cuh"

#define DEQUANT_THREADS 128  // = the launcher's block size: a CTA covers 128 chunks (4096 values) of a row

// One thread per 32-value chunk; blockIdx.y walks output rows. A thread's 32 values are staged in
// shared memory and the CTA then writes its span of the row with consecutive 16-byte stores:
// written straight from the registers, each lane's 32 scalar stores would land 64 bytes apart
// (one partial sector per lane per store), which made these tiles ~10x slower than the bytes
// they move (H100 trace of gpt-oss at 64 sequences, docs/benchmarks.md).
//   raw:     [num_weight_rows, row_bytes] u8, GGUF blocks of TYPE
//   row_ids: [num_out_rows] int32 (rows to gather) or null (rows first_row + y)
//   out:     [num_out_rows, num_cols] float32 (OUT_HALF=0) or fp16 bits (OUT_HALF=1); num_cols % 32 == 0
template <int TYPE, int OUT_HALF>
__global__ void __launch_bounds__(DEQUANT_THREADS)
dequantize_rows(const u8* __restrict__ raw, i64 row_bytes, const int* __restrict__ row_ids, i64 first_row,
                int num_out_rows, int num_cols, void* __restrict__ out) {
    constexpr int WORDS_PER_CHUNK = OUT_HALF ? 16 : 32;  // 32 values as u32 words
    __shared__ __align__(16) u32 staged[DEQUANT_THREADS * WORDS_PER_CHUNK];
    const int out_row = blockIdx.y;
    if (out_row >= num_out_rows) return;  // uniform over the CTA
    const int first_chunk = blockIdx.x * DEQUANT_THREADS, chunk = first_chunk + threadIdx.x;
    const int num_chunks = min(DEQUANT_THREADS, num_cols / 32 - first_chunk);  // > 0: the grid covers the row
    if (threadIdx.x < num_chunks) {
        const i64 src_row = row_ids ? (i64)row_ids[out_row] : first_row + out_row;
        float values[32];
        dequant_chunk32<TYPE>(raw + src_row * row_bytes, chunk, values);
        u32 words[WORDS_PER_CHUNK];
#pragma unroll
        for (int i = 0; i < WORDS_PER_CHUNK; ++i) {
            words[i] = OUT_HALF ? (u32)float_to_half(values[2 * i]) | ((u32)float_to_half(values[2 * i + 1]) << 16)
                                : __float_as_uint(values[i]);
        }
        uint4* dst = reinterpret_cast<uint4*>(staged + threadIdx.x * WORDS_PER_CHUNK);
#pragma unroll
        for (int i = 0; i < WORDS_PER_CHUNK / 4; ++i)
            dst[i] = make_uint4(words[4 * i], words[4 * i + 1], words[4 * i + 2], words[4 * i + 3]);
    }
    __syncthreads();
    const int num_pieces = num_chunks * WORDS_PER_CHUNK / 4;  // 16-byte pieces of the CTA's span
    const i64 element_bytes = OUT_HALF ? 2 : 4;
    uint4* row_out = reinterpret_cast<uint4*>(reinterpret_cast<u8*>(out) +
                                              ((i64)out_row * num_cols + 32 * (i64)first_chunk) * element_bytes);
    const uint4* src = reinterpret_cast<const uint4*>(staged);
    for (int i = threadIdx.x; i < num_pieces; i += DEQUANT_THREADS) row_out[i] = src[i];
}
