// GGUF block formats on the device: byte layouts and dequantization of one 32-value chunk.
//
// Type ids are ggml's enum values, so the Python side passes GGMLQuantizationType straight
// through as a template argument. Every product is __fmul_rn and every sum a separate op so
// the compiler cannot contract them into FMAs: the results are then bit-identical to the
// NumPy reference (gguf.quants), which computes (d * q) + m etc. in float32.
#pragma once

#define GGML_F32 0
#define GGML_F16 1
#define GGML_Q4_0 2
#define GGML_Q4_1 3
#define GGML_Q5_0 6
#define GGML_Q5_1 7
#define GGML_Q8_0 8
#define GGML_Q4_K 12
#define GGML_Q5_K 13
#define GGML_Q6_K 14
#define GGML_BF16 30
#define GGML_MXFP4 39

// (values per block, bytes per block) of each type.
template <int TYPE> struct BlockShape;
template <> struct BlockShape<GGML_F32> { static const int values = 1, bytes = 4; };
template <> struct BlockShape<GGML_F16> { static const int values = 1, bytes = 2; };
template <> struct BlockShape<GGML_BF16> { static const int values = 1, bytes = 2; };
template <> struct BlockShape<GGML_Q4_0> { static const int values = 32, bytes = 18; };
template <> struct BlockShape<GGML_Q4_1> { static const int values = 32, bytes = 20; };
template <> struct BlockShape<GGML_Q5_0> { static const int values = 32, bytes = 22; };
template <> struct BlockShape<GGML_Q5_1> { static const int values = 32, bytes = 24; };
template <> struct BlockShape<GGML_Q8_0> { static const int values = 32, bytes = 34; };
template <> struct BlockShape<GGML_MXFP4> { static const int values = 32, bytes = 17; };
template <> struct BlockShape<GGML_Q4_K> { static const int values = 256, bytes = 144; };
template <> struct BlockShape<GGML_Q5_K> { static const int values = 256, bytes = 176; };
template <> struct BlockShape<GGML_Q6_K> { static const int values = 256, bytes = 210; };

// Q4_K / Q5_K: 12 bytes pack eight 6-bit (scale, min) pairs.
__device__ __forceinline__ void k_scale_min(const u8* scales, int j, int& sc, int& m) {
    if (j < 4) {
        sc = scales[j] & 63;
        m = scales[j + 4] & 63;
    } else {
        sc = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
        m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
    }
}

__device__ __forceinline__ float e2m1_value(int code) {
    // OCP microscaling E2M1: sign bit 3, magnitude table below.
    const float magnitude[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    const float v = magnitude[code & 7];
    return (code & 8) ? -v : v;
}

// Values [32 * chunk, 32 * chunk + 32) of a row that starts at `row`, as float32.
template <int TYPE>
__device__ __forceinline__ void dequant_chunk32(const u8* row, int chunk, float out[32]) {
    if (TYPE == GGML_F32) {
        const float* src = reinterpret_cast<const float*>(row) + 32 * chunk;
#pragma unroll
        for (int i = 0; i < 32; ++i) out[i] = src[i];
    } else if (TYPE == GGML_F16) {
        const u16* src = reinterpret_cast<const u16*>(row) + 32 * chunk;
#pragma unroll
        for (int i = 0; i < 32; ++i) out[i] = half_to_float(src[i]);
    } else if (TYPE == GGML_BF16) {
        const u16* src = reinterpret_cast<const u16*>(row) + 32 * chunk;
#pragma unroll
        for (int i = 0; i < 32; ++i) out[i] = __int_as_float(((u32)src[i]) << 16);
    } else if (TYPE == GGML_Q4_0 || TYPE == GGML_Q4_1 || TYPE == GGML_Q5_0 || TYPE == GGML_Q5_1) {
        const u8* block = row + chunk * BlockShape<TYPE>::bytes;
        const float d = half_to_float(load_u16(block));
        const bool has_min = TYPE == GGML_Q4_1 || TYPE == GGML_Q5_1;
        const bool has_high = TYPE == GGML_Q5_0 || TYPE == GGML_Q5_1;
        const float m = has_min ? half_to_float(load_u16(block + 2)) : 0.0f;
        const int qs_offset = (has_min ? 4 : 2) + (has_high ? 4 : 0);
        const u32 qh = has_high ? (u32)load_i32_2aligned(block + (has_min ? 4 : 2)) : 0u;
        const int zero = has_min ? 0 : (has_high ? 16 : 8);
        const u8* qs = block + qs_offset;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            int lo = qs[j] & 0x0F, hi = qs[j] >> 4;
            if (has_high) {
                lo |= ((qh >> j) & 1u) << 4;
                hi |= ((qh >> (j + 16)) & 1u) << 4;
            }
            if (has_min) {
                out[j] = __fmul_rn(d, (float)lo) + m;
                out[j + 16] = __fmul_rn(d, (float)hi) + m;
            } else {
                out[j] = __fmul_rn(d, (float)(lo - zero));
                out[j + 16] = __fmul_rn(d, (float)(hi - zero));
            }
        }
    } else if (TYPE == GGML_Q8_0) {
        const u8* block = row + chunk * 34;
        const float d = half_to_float(load_u16(block));
        const u16* qs = reinterpret_cast<const u16*>(block + 2);  // 2-byte aligned: 16 loads, not 32
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            const u16 pair = qs[i];
            out[2 * i] = __fmul_rn(d, (float)(i8)(pair & 0xFF));
            out[2 * i + 1] = __fmul_rn(d, (float)(i8)(pair >> 8));
        }
    } else if (TYPE == GGML_MXFP4) {
        const u8* block = row + chunk * 17;
        const float scale = ldexpf(1.0f, (int)block[0] - 127);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            out[j] = __fmul_rn(e2m1_value(block[1 + j] & 0x0F), scale);
            out[j + 16] = __fmul_rn(e2m1_value(block[1 + j] >> 4), scale);
        }
    } else if (TYPE == GGML_Q4_K || TYPE == GGML_Q5_K) {
        // Super-block of 256 = 8 sub-blocks of 32, each with a 6-bit scale and min.
        const int sub = chunk & 7;
        const u8* block = row + (chunk >> 3) * BlockShape<TYPE>::bytes;
        const float d = half_to_float(load_u16(block));
        const float dmin = half_to_float(load_u16(block + 2));
        int sc, mn;
        k_scale_min(block + 4, sub, sc, mn);
        const float scale = __fmul_rn(d, (float)sc), offset = __fmul_rn(dmin, (float)mn);
        const u8* qh = block + 16;  // Q5_K only: bit `sub` of qh[l] is value l's fifth bit
        const u8* qs = block + (TYPE == GGML_Q5_K ? 48 : 16) + 32 * (sub >> 1);
        const int shift = (sub & 1) * 4;
#pragma unroll
        for (int l = 0; l < 32; ++l) {
            int q = (qs[l] >> shift) & 0x0F;
            if (TYPE == GGML_Q5_K) q |= ((qh[l] >> sub) & 1) << 4;
            out[l] = __fmul_rn(scale, (float)q) - offset;
        }
    } else if (TYPE == GGML_Q6_K) {
        // Super-block of 256: ql[128] low nibbles, qh[64] 2-bit high parts, int8 scales[16], fp16 d.
        const int sub = chunk & 7, half = sub >> 2, r = sub & 3;
        const u8* block = row + (chunk >> 3) * 210;
        const u8* ql = block + 64 * half + 32 * (r & 1);
        const u8* qh = block + 128 + 32 * half;
        const i8* scales = reinterpret_cast<const i8*>(block + 192) + 8 * half + 2 * r;
        const float d = half_to_float(load_u16(block + 208));
        const float scale_lo = __fmul_rn(d, (float)scales[0]), scale_hi = __fmul_rn(d, (float)scales[1]);
        const int nibble_shift = (r >> 1) * 4, high_shift = 2 * r;
#pragma unroll
        for (int l = 0; l < 32; ++l) {
            const int q = (((ql[l] >> nibble_shift) & 0x0F) | (((qh[l] >> high_shift) & 3) << 4)) - 32;
            out[l] = __fmul_rn(l < 16 ? scale_lo : scale_hi, (float)q);
        }
    }
}
