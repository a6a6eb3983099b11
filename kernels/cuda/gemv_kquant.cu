// Fused dequantize-GEMV for small batches (decode) over the k-quants Q4_K / Q5_K / Q6_K, with
// the activations quantized once per linear into q8_256 codes (quantize_q8_256 below: the same
// codes as the reference's round_activations "q8_256", i.e. llama.cpp CPU's block_q8_K). Each
// sub-block's product with the activations is an exact integer dot (dp4a); the sub-block scales
// (and mins) are applied in integers too, so per lane and super-block only
//   act_scale * (d * sum(sc * dot) - dmin * sum(m * act_sum))        (Q4_K, Q5_K)
//   act_scale * d * sum(sc * dot((q - 32), act))                      (Q6_K)
// is float: results equal the reference up to float32 rounding and summation order. The float
// ops are explicit (_rn intrinsics, no contraction choices left to the compiler), so a row's
// result is bit-identical for every NUM_TOKENS and ROWS instantiation (batch invariance).
#include "common.cuh"
#include "quant_blocks.cuh"

// ---- activations ---------------------------------------------------------------------------

// One CTA of 256 threads per 256-value block (gridDim = (num_cols / 256, num_rows)).
// Code and scale exactly as NumPy computes them in the reference: scale = amax / 127 (IEEE
// division), code = rint(x * (1 / scale)) (half to even), 0 for an all-zero block.
//   x:      [num_rows, num_cols] float32, num_cols % 256 == 0
//   codes:  [num_rows, num_cols] int8
//   scales: [num_rows, num_cols / 256] float32
//   sums:   [num_rows, num_cols / 32] int32, the codes' sum per 32 (the Q4_K/Q5_K mins need it)
__global__ void quantize_q8_256(const float* __restrict__ x, int num_cols, i8* __restrict__ codes,
                                float* __restrict__ scales, int* __restrict__ sums) {
    __shared__ float scratch[32];
    const int col = blockIdx.x * 256 + threadIdx.x;
    const i64 index = (i64)blockIdx.y * num_cols + col;
    const float v = x[index];
    const float scale = block_max(fabsf(v), scratch) / 127.0f;
    const float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
    const int code = (int)rintf(__fmul_rn(v, inverse));
    codes[index] = (i8)code;
    int sum = code;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if ((threadIdx.x & 31) == 0) sums[(i64)blockIdx.y * (num_cols / 32) + col / 32] = sum;
    if (threadIdx.x == 0) scales[(i64)blockIdx.y * (num_cols / 256) + blockIdx.x] = scale;
}

// ---- weights -------------------------------------------------------------------------------

__device__ __forceinline__ int byte_of(u32 word, int index) { return (word >> (8 * index)) & 0xFF; }

__device__ __forceinline__ int signed_byte_of(u32 word, int index) {
    return (int)(i8)(u8)(word >> (8 * index));
}

// `N` little-endian words from an address that is only 2-byte aligned (Q6_K's 210-byte blocks):
// aligned word loads, then a funnel shift. The word past the end is read only when misaligned,
// so the loads stay inside [p - 2, p + 4 N + 2), which the callers keep inside the block.
template <int N>
__device__ __forceinline__ void load_words_2aligned(const u8* p, u32 out[N]) {
    const unsigned long long address = reinterpret_cast<unsigned long long>(p);
    const u32* base = reinterpret_cast<const u32*>(address & ~3ull);
    const u32 shift = (u32)(address & 3) * 8;
    u32 words[N + 1];
#pragma unroll
    for (int i = 0; i < N; ++i) words[i] = __ldg(base + i);
    words[N] = shift ? __ldg(base + N) : 0u;
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = __funnelshift_r(words[i], words[i + 1], shift);
}

// One lane's share of one super-block, decoded into registers before the token loop (so each
// weight byte is read and unpacked once for all tokens). A super-block of 256 values is split
// over 4 lanes (`part` 0..3), 64 values each:
//   Q4_K/Q5_K: part p owns sub-blocks 2p and 2p+1 (values 64p .. 64p+63): the low nibbles of
//              qs[32p .. 32p+31] are sub-block 2p, their high nibbles sub-block 2p+1.
//   Q6_K:      part p owns half n = p / 2, rows h = p % 2 of it: values 128n + 32k + 16h + [0, 16)
//              for k = 0..3, each group with its own int8 scale sc[8n + h + 2k].
template <int TYPE> struct KquantPart;

// Q4_K: {fp16 d, fp16 dmin, scales[12], qs[128]} = 144 bytes; Q5_K adds qh[32] before qs (176).
template <int TYPE> struct KquantMinPart {
    u32 q[16];  // [2 sub-blocks][8 words]: 4 values a word, 0..15 (Q4_K) or 0..31 (Q5_K)
    int scale[2], min[2];
    float d, dmin;

    __device__ __forceinline__ void load(const u8* block, int part) {
        // 144 and 176 are multiples of 16 and rows start at multiples of 16: 16-byte loads.
        const uint4 header = __ldg(reinterpret_cast<const uint4*>(block));
        d = half_to_float((u16)(header.x & 0xFFFF));
        dmin = half_to_float((u16)(header.x >> 16));
        const u32 s[3] = {header.y, header.z, header.w};  // the 12 packed 6-bit scale bytes
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int j = 2 * part + i;  // sub-block; k_scale_min's packing, on registers
            if (j < 4) {
                scale[i] = byte_of(s[0], j) & 63;
                min[i] = byte_of(s[1], j) & 63;
            } else {
                scale[i] = (byte_of(s[2], j - 4) & 0x0F) | ((byte_of(s[0], j - 4) >> 6) << 4);
                min[i] = (byte_of(s[2], j - 4) >> 4) | ((byte_of(s[1], j - 4) >> 6) << 4);
            }
        }
        const int qs_offset = TYPE == GGML_Q5_K ? 48 : 16;
        const uint4* qs = reinterpret_cast<const uint4*>(block + qs_offset + 32 * part);
        const uint4 q0 = __ldg(qs), q1 = __ldg(qs + 1);
        const u32 packed[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            q[i] = packed[i] & 0x0F0F0F0Fu;
            q[8 + i] = (packed[i] >> 4) & 0x0F0F0F0Fu;
        }
        if (TYPE == GGML_Q5_K) {
            // Bit j of qh[l] is the fifth bit of value l of sub-block j.
            const uint4* qh = reinterpret_cast<const uint4*>(block + 16);
            const uint4 h0 = __ldg(qh), h1 = __ldg(qh + 1);
            const u32 high[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                q[i] |= ((high[i] >> (2 * part)) & 0x01010101u) << 4;
                q[8 + i] |= ((high[i] >> (2 * part + 1)) & 0x01010101u) << 4;
            }
        }
    }

    // codes: the token's 64 activation codes of this part (16 words); sums: the codes' sums
    // of the two sub-blocks. Returns the part's contribution before the activation scale.
    __device__ __forceinline__ float dot(const int codes[16], int2 sums) const {
        int dot0 = 0, dot1 = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            dot0 = __dp4a((int)q[i], codes[i], dot0);
            dot1 = __dp4a((int)q[8 + i], codes[8 + i], dot1);
        }
        // |scale * dot| <= 63 * 32 * 31 * 127 and |min * sum| <= 63 * 32 * 127: exact in int32.
        const int scaled = scale[0] * dot0 + scale[1] * dot1;
        const int offset = min[0] * sums.x + min[1] * sums.y;
        return __fmaf_rn(d, (float)scaled, -__fmul_rn(dmin, (float)offset));
    }
};

template <> struct KquantPart<GGML_Q4_K> : KquantMinPart<GGML_Q4_K> {};
template <> struct KquantPart<GGML_Q5_K> : KquantMinPart<GGML_Q5_K> {};

// Q6_K: {ql[128], qh[64], int8 scales[16], fp16 d} = 210 bytes, only 2-byte aligned.
template <> struct KquantPart<GGML_Q6_K> {
    int q[16];  // [4 groups k][4 words]: signed q - 32 in -32..31, 4 values a word
    int scale[4];
    float d;

    __device__ __forceinline__ void load(const u8* block, int part) {
        const int half = part >> 1, row = part & 1;
        u32 low_a[4], low_b[4], high[4], s[2];
        load_words_2aligned<4>(block + 64 * half + 16 * row, low_a);       // groups 0 and 2
        load_words_2aligned<4>(block + 64 * half + 32 + 16 * row, low_b);  // groups 1 and 3
        load_words_2aligned<4>(block + 128 + 32 * half + 16 * row, high);  // 2 bits per group
        load_words_2aligned<2>(block + 192 + 8 * half, s);
        d = half_to_float(load_u16(block + 208));
        scale[0] = signed_byte_of(s[0], row);
        scale[1] = signed_byte_of(s[0], row + 2);
        scale[2] = signed_byte_of(s[1], row);
        scale[3] = signed_byte_of(s[1], row + 2);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            // Per byte: low nibble | two high bits at 4..5, then minus 32 (bytes never borrow:
            // __vsub4 works per byte, and the result is read as signed int8).
            const u32 v0 = (low_a[i] & 0x0F0F0F0Fu) | ((high[i] << 4) & 0x30303030u);
            const u32 v1 = (low_b[i] & 0x0F0F0F0Fu) | ((high[i] << 2) & 0x30303030u);
            const u32 v2 = ((low_a[i] >> 4) & 0x0F0F0F0Fu) | (high[i] & 0x30303030u);
            const u32 v3 = ((low_b[i] >> 4) & 0x0F0F0F0Fu) | ((high[i] >> 2) & 0x30303030u);
            q[i] = (int)__vsub4(v0, 0x20202020u);
            q[4 + i] = (int)__vsub4(v1, 0x20202020u);
            q[8 + i] = (int)__vsub4(v2, 0x20202020u);
            q[12 + i] = (int)__vsub4(v3, 0x20202020u);
        }
    }

    // codes: the token's 64 activation codes of this part, group k in words 4k..4k+3.
    __device__ __forceinline__ float dot(const int codes[16], int2) const {
        int total = 0;  // |total| <= 4 * 128 * 16 * 32 * 127: exact in int32
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            int group = 0;
#pragma unroll
            for (int i = 0; i < 4; ++i) group = __dp4a(q[4 * k + i], codes[4 * k + i], group);
            total += scale[k] * group;
        }
        return __fmul_rn(d, (float)total);
    }
};

// Offsets (in codes) of the 4 runs of 16 codes that a part multiplies, within its super-block.
template <int TYPE>
__device__ __forceinline__ int codes_offset(int part, int run) {
    if (TYPE == GGML_Q6_K) return 128 * (part >> 1) + 32 * run + 16 * (part & 1);
    return 64 * part + 16 * run;
}

// ROWS rows per warp (each activation load serves all of them), all NUM_TOKENS tokens per
// weight read; lanes 4i..4i+3 take super-block i of every 8.
//   weight: [num_rows, row_bytes] u8 super-blocks of TYPE (256 values each)
//   codes:  [NUM_TOKENS, num_blocks * 256] int8;  scales: [NUM_TOKENS, num_blocks] float32
//   sums:   [NUM_TOKENS, num_blocks * 8] int32 (codes' sum per 32)
//   bias:   [num_rows] float32 or null
//   out:    [NUM_TOKENS, out_stride] float32; row r of the weight lands in column r
template <int TYPE, int NUM_TOKENS, int ROWS>
__global__ void gemv_kquant(const u8* __restrict__ weight, i64 row_bytes, int num_rows, int num_blocks,
                            const i8* __restrict__ codes, const float* __restrict__ scales,
                            const int* __restrict__ sums, const float* __restrict__ bias,
                            float* __restrict__ out, i64 out_stride) {
    const int warps_per_cta = blockDim.x >> 5;
    const int first_row = (blockIdx.x * warps_per_cta + (threadIdx.x >> 5)) * ROWS;
    if (first_row >= num_rows) return;
    const int lane = threadIdx.x & 31, part = lane & 3;
    const i64 num_cols = (i64)num_blocks * 256;
    float acc[ROWS][NUM_TOKENS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int t = 0; t < NUM_TOKENS; ++t) acc[r][t] = 0.0f;
    for (int b = lane >> 2; b < num_blocks; b += 8) {
        KquantPart<TYPE> w[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            // A missing last row (odd row count) re-reads the previous one and is not stored.
            const int row = min(first_row + r, num_rows - 1);
            w[r].load(weight + row * row_bytes + (i64)b * BlockShape<TYPE>::bytes, part);
        }
#pragma unroll
        for (int t = 0; t < NUM_TOKENS; ++t) {
            const i8* token_codes = codes + t * num_cols + (i64)b * 256;
            int a[16];
#pragma unroll
            for (int run = 0; run < 4; ++run) {
                const int4 v = *reinterpret_cast<const int4*>(token_codes + codes_offset<TYPE>(part, run));
                a[4 * run] = v.x; a[4 * run + 1] = v.y; a[4 * run + 2] = v.z; a[4 * run + 3] = v.w;
            }
            int2 sub_sums;  // Q6_K has no mins
            sub_sums.x = sub_sums.y = 0;
            if (TYPE != GGML_Q6_K)
                sub_sums = *reinterpret_cast<const int2*>(sums + (t * num_cols + (i64)b * 256) / 32 + 2 * part);
            const float act_scale = scales[(i64)t * num_blocks + b];
#pragma unroll
            for (int r = 0; r < ROWS; ++r) acc[r][t] = __fmaf_rn(act_scale, w[r].dot(a, sub_sums), acc[r][t]);
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const int row = first_row + r;
#pragma unroll
        for (int t = 0; t < NUM_TOKENS; ++t) {
            const float total = warp_sum(acc[r][t]);
            // Spread the stores over lanes instead of serializing them on lane 0.
            if (lane == ((r * NUM_TOKENS + t) & 31) && row < num_rows)
                out[t * out_stride + row] = bias ? total + bias[row] : total;
        }
    }
}
