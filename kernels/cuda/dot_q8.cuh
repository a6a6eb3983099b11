// One lane's exact integer dot of a 32-value weight block with a q8_32 activation block (dp4a),
// shared by the dense GEMV (gemv_int8.cu) and the expert GEMVs (moe_int8.cu). As in ggml's
// vec_dot_*_q8 kernels, the block's products are summed as integers and scaled once, so only
// the float summation order differs from the NumPy reference (whose products are exact too:
// a q8 code times an fp16 scale times a weight of at most 8 significant bits).
#pragma once
#include "common.cuh"
#include "quant_blocks.cuh"

// A warp covers 8 blocks per step: 4 lanes a block, 8 values a lane. For the nibble formats
// (Q4_0, Q4_1, Q5_0, Q5_1, MXFP4) lane part p owns values {4p..4p+3} (low nibbles of
// qs[4p..4p+3]) and {16+4p..16+4p+3} (their high nibbles); for Q8_0 it owns values 8p..8p+7.
template <int TYPE>
__device__ __forceinline__ void activation_offsets(int part, int& first, int& second) {
    if (TYPE == GGML_Q8_0) { first = 8 * part; second = 8 * part + 4; }
    else { first = 4 * part; second = 16 + 4 * part; }
}

// One lane's raw words of a weight block, loaded apart from their use so that a kernel can have
// several blocks in flight. Fields a TYPE lacks stay unused.
struct WeightPart {
    int q0, q1;  // quant words: Q8_0 two int8x4; nibble formats packed nibbles in q0
    u32 qh;      // Q5_0 / Q5_1: the block's 32 high bits
    u16 d, m;    // fp16 scale and (Q4_1 / Q5_1) min; MXFP4: the E8M0 exponent byte in d
};

template <int TYPE>
__device__ __forceinline__ WeightPart load_part(const u8* block, int part) {
    const bool has_min = TYPE == GGML_Q4_1 || TYPE == GGML_Q5_1;
    const bool has_high = TYPE == GGML_Q5_0 || TYPE == GGML_Q5_1;
    WeightPart w;
    if (TYPE == GGML_MXFP4) {
        // 17-byte blocks sit at any byte offset (the warp's 8 blocks are one contiguous 136-byte
        // span, so the loads still coalesce).
        w.d = block[0];
        w.m = 0;
        w.qh = 0u;
        w.q0 = (int)load_u32_unaligned(block + 1 + 4 * part);
        w.q1 = 0;
        return w;
    }
    w.d = load_u16(block);
    w.m = has_min ? load_u16(block + 2) : (u16)0;
    w.qh = has_high ? (u32)load_i32_2aligned(block + (has_min ? 4 : 2)) : 0u;
    if (TYPE == GGML_Q8_0) {
        w.q0 = load_i32_2aligned(block + 2 + 8 * part);
        w.q1 = load_i32_2aligned(block + 2 + 8 * part + 4);
    } else {
        w.q0 = load_i32_2aligned(block + (has_min ? 4 : 2) + (has_high ? 4 : 0) + 4 * part);
        w.q1 = 0;
    }
    return w;
}

// Four E2M1 nibbles (one in the low 4 bits of each byte of `nibbles`) as four int8 values twice
// their magnitude: 0, 1, 2, 3, 4, 6, 8, 12 with the sign of bit 3. Doubled, every E2M1 value is
// an integer, so dp4a stays exact; the block scale 2^(e - 127) is halved to match.
__device__ __forceinline__ int mxfp4_to_int8x4(u32 nibbles) {
    const u32 positive_lo = 0x03020100u, positive_hi = 0x0C080604u;  // bytes 0,1,2,3 | 4,6,8,12
    const u32 negative_lo = 0xFDFEFF00u, negative_hi = 0xF4F8FAFCu;  // their negations
    // prmt takes one 4-bit selector per result byte (bits 0-2: which of the 8 source bytes; bit 3
    // would replicate a sign, so it is cleared): gather the low 3 bits of each byte into nibbles.
    const u32 index = nibbles & 0x07070707u;
    const u32 spread = index | (index >> 4);  // byte i's index now at bits 8i/2.. for i = 0, 2
    const u32 selector = (spread & 0xFFu) | ((spread >> 8) & 0xFF00u);
    const u32 positive = __byte_perm(positive_lo, positive_hi, selector);
    const u32 negative = __byte_perm(negative_lo, negative_hi, selector);
    const u32 is_negative = ((nibbles >> 3) & 0x01010101u) * 0xFFu;
    return (int)((positive & ~is_negative) | (negative & is_negative));
}

// The eight E2M1 nibbles of `packed` (4 bytes of an MXFP4 block: byte j holds value j in its
// low nibble and value 16 + j in its high one), doubled as mxfp4_to_int8x4 does, as two int8x4
// words: lo = the low nibbles' values, hi = the high nibbles'. The same values as two
// mxfp4_to_int8x4 calls in about half the instructions: each 16-bit half of the word is already
// a prmt selector (its nibbles interleave low and high values), so a half is looked up in the
// positive and negative tables and bit 3 of each nibble picks between them with a third prmt;
// two more prmts then de-interleave the halves.
__device__ __forceinline__ void mxfp4_to_int8x8(u32 packed, int& lo, int& hi) {
    const u32 positive_lo = 0x03020100u, positive_hi = 0x0C080604u;
    const u32 negative_lo = 0xFDFEFF00u, negative_hi = 0xF4F8FAFCu;
    u32 halves[2];  // bytes: value(low nibble 2h), value(high 2h), value(low 2h+1), value(high 2h+1)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const u32 nibbles = (packed >> (16 * h)) & 0xFFFFu;
        const u32 index = nibbles & 0x7777u;  // bit 3 of a selector nibble would replicate a sign
        const u32 positive = __byte_perm(positive_lo, positive_hi, index);
        const u32 negative = __byte_perm(negative_lo, negative_hi, index);
        const u32 pick = 0x3210u | ((nibbles & 0x8888u) >> 1);  // byte i, or 4 + i when negative
        halves[h] = __byte_perm(positive, negative, pick);
    }
    lo = (int)__byte_perm(halves[0], halves[1], 0x6420u);
    hi = (int)__byte_perm(halves[0], halves[1], 0x7531u);
}

// 2^(e - 128) from an E8M0 byte, exactly (the MXFP4 scale 2^(e - 127) halved for the doubled
// values of mxfp4_to_int8x4): built from its float bits, since ldexpf's general path costs a
// dozen instructions per block and this runs once per lane and block of every expert GEMV.
// e >= 2 is a normal float with exponent field e - 1; e = 1, 0 are the subnormals 2^-127, 2^-128.
__device__ __forceinline__ float e8m0_half_scale(u32 e) {
    return __int_as_float(e >= 2u ? (int)((e - 1u) << 23) : (int)(0x00200000u << e));
}

// A lane's weight part ready for dp4a: its two int8x4 words and float scale (and min), decoded
// once per block so that a kernel multiplying it with several tokens' activations (a GEMV over
// NUM_TOKENS, an expert tile of ROWS pairs) does not repeat the nibble decode per token.
struct DecodedPart {
    int lo, hi;  // the lane's 8 weight values as two int8x4 words (MXFP4 doubled, see above)
    float d, m;  // scale, and the min of Q4_1 / Q5_1
};

template <int TYPE>
__device__ __forceinline__ DecodedPart decode_part(const WeightPart& w, int part) {
    DecodedPart out;
    out.m = 0.0f;
    if (TYPE == GGML_Q8_0) {
        out.lo = w.q0;
        out.hi = w.q1;
        out.d = half_to_float(w.d);
        return out;
    }
    const u32 packed = (u32)w.q0;
    if (TYPE == GGML_MXFP4) {
        mxfp4_to_int8x8(packed, out.lo, out.hi);
        out.d = e8m0_half_scale((u32)w.d);
        return out;
    }
    const bool has_min = TYPE == GGML_Q4_1 || TYPE == GGML_Q5_1;
    const bool has_high = TYPE == GGML_Q5_0 || TYPE == GGML_Q5_1;
    int lo = (int)(packed & 0x0F0F0F0Fu);
    int hi = (int)((packed >> 4) & 0x0F0F0F0Fu);
    if (has_high) {
        const u32 lo_bits = w.qh >> (4 * part), hi_bits = w.qh >> (16 + 4 * part);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            lo |= (int)(((lo_bits >> i) & 1u) << (8 * i + 4));
            hi |= (int)(((hi_bits >> i) & 1u) << (8 * i + 4));
        }
    }
    out.lo = lo;
    out.hi = hi;
    out.d = half_to_float(w.d);
    if (has_min) out.m = half_to_float(w.m);
    return out;
}

// One lane's share of block (weight) x block (activation): returns the float contribution.
//   a, b: the lane's 8 activation codes as two packed int8x4 words; dx: the activation scale.
template <int TYPE>
__device__ __forceinline__ float dot_decoded(const DecodedPart& w, int a, int b, float dx) {
    const int dot = __dp4a(w.lo, a, __dp4a(w.hi, b, 0));
    if (TYPE == GGML_Q8_0 || TYPE == GGML_MXFP4) return __fmul_rn(w.d, dx) * (float)dot;
    const int ones = 0x01010101;
    const int act_sum = __dp4a(ones, a, __dp4a(ones, b, 0));
    if (TYPE == GGML_Q4_1 || TYPE == GGML_Q5_1) return __fmul_rn(w.d, dx) * (float)dot + __fmul_rn(w.m, dx) * (float)act_sum;
    const int zero = TYPE == GGML_Q5_0 ? 16 : 8;
    return __fmul_rn(w.d, dx) * (float)(dot - zero * act_sum);
}
