// Token-sampling kernels (launchers and contracts: sampling.py; the spec is
// kernels/reference/sampling.py). One CTA per row of a [num_rows, vocab] float32 matrix whose
// rows are `stride` floats apart. No fast math: comparisons and sums must match the reference.
#include "common.cuh"

#define NEG_INFINITY_F __int_as_float(0xff800000)
#define MAX_I64 0x7fffffffffffffffLL

namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;

// Order used by argmax and top-logprob ranking: larger value first, the lower id on a tie; NaN
// ranks above everything (NumPy's argmax returns the first NaN).
__device__ __forceinline__ bool ranks_before(float a, long long ia, float b, long long ib) {
  const bool na = a != a, nb = b != b;  // NaN
  if (na != nb) return na;
  if (!na && a != b) return a > b;
  return ia < ib;
}

// Block-wide best (value, id) under ranks_before; every thread gets the answer.
__device__ void block_best(float& value, long long& id) {
  __shared__ float s_value[kWarps];
  __shared__ long long s_id[kWarps];
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float v = __shfl_down_sync(0xffffffffu, value, offset);
    const long long i = __shfl_down_sync(0xffffffffu, id, offset);
    if (ranks_before(v, i, value, id)) { value = v; id = i; }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) { s_value[warp] = value; s_id[warp] = id; }
  __syncthreads();
  if (warp == 0) {
    const int num_warps = blockDim.x / 32;
    value = lane < num_warps ? s_value[lane] : NEG_INFINITY_F;
    id = lane < num_warps ? s_id[lane] : MAX_I64;
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float v = __shfl_down_sync(0xffffffffu, value, offset);
      const long long i = __shfl_down_sync(0xffffffffu, id, offset);
      if (ranks_before(v, i, value, id)) { value = v; id = i; }
    }
    if (lane == 0) { s_value[0] = value; s_id[0] = id; }
  }
  __syncthreads();
  value = s_value[0];
  id = s_id[0];
  __syncthreads();  // the shared slots may be reused by the next call
}

// float -> unsigned key whose unsigned order is the float order (-0 just below +0).
__device__ __forceinline__ unsigned int order_key(float x) {
  const unsigned int bits = __float_as_uint(x);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float key_value(unsigned int key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

}  // namespace

// out[row] = the lowest id among the row's maxima.
extern "C" __global__ void row_argmax(const float* __restrict__ logits, long long stride,
                                      int vocab, long long* __restrict__ out) {
  const float* x = logits + blockIdx.x * stride;
  float best = NEG_INFINITY_F;
  long long best_id = MAX_I64;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = x[i];
    if (ranks_before(v, i, best, best_id)) { best = v; best_id = i; }
  }
  block_best(best, best_id);
  if (threadIdx.x == 0) out[blockIdx.x] = best_id;
}

// The k best entries of each row, best first (value desc, id asc): k rounds, each the best entry
// ranked strictly after the previous round's pick.
extern "C" __global__ void row_top_k(const float* __restrict__ logits, long long stride, int vocab,
                                     int k, long long* __restrict__ out_ids,
                                     float* __restrict__ out_values) {
  const float* x = logits + blockIdx.x * stride;
  float prev = 0.0f;
  long long prev_id = -1;
  for (int round = 0; round < k; ++round) {
    float best = NEG_INFINITY_F;
    long long best_id = MAX_I64;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float v = x[i];
      if (prev_id >= 0 && !ranks_before(prev, prev_id, v, i)) continue;  // already taken
      if (ranks_before(v, i, best, best_id)) { best = v; best_id = i; }
    }
    block_best(best, best_id);
    if (best_id == MAX_I64) { best_id = 0; best = x[0]; }  // cannot happen for k <= vocab
    if (threadIdx.x == 0) {
      out_ids[blockIdx.x * (long long)k + round] = best_id;
      out_values[blockIdx.x * (long long)k + round] = best;
    }
    prev = best;
    prev_id = best_id;
  }
}

// kth[row] = the k-th largest value of the row (k = top_k[row], 1-based), found exactly by a
// 4-pass radix select over order keys; rows with k <= 0 or k >= vocab get -inf (filter off).
extern "C" __global__ void row_kth_largest(const float* __restrict__ logits, long long stride,
                                           int vocab, const long long* __restrict__ top_k,
                                           float* __restrict__ kth) {
  __shared__ unsigned int histogram[256];
  __shared__ unsigned int s_prefix;
  __shared__ long long s_remaining;
  const long long k = top_k[blockIdx.x];
  if (k <= 0 || k >= vocab) {
    if (threadIdx.x == 0) kth[blockIdx.x] = NEG_INFINITY_F;
    return;
  }
  const float* x = logits + blockIdx.x * stride;
  if (threadIdx.x == 0) { s_prefix = 0u; s_remaining = k; }
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) histogram[b] = 0u;
    __syncthreads();
    const unsigned int prefix = s_prefix;
    const unsigned int high_mask = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const unsigned int key = order_key(x[i]);
      if ((key & high_mask) == (prefix & high_mask)) atomicAdd(&histogram[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      long long remaining = s_remaining;
      int digit = 255;
      for (; digit > 0; --digit) {
        if ((long long)histogram[digit] >= remaining) break;
        remaining -= histogram[digit];
      }
      s_prefix = prefix | ((unsigned int)digit << shift);
      s_remaining = remaining;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) kth[blockIdx.x] = key_value(s_prefix);
}

// Inverse-CDF draw per row (float64 sums): out = the first index whose cumulative mass exceeds
// min(u * total, nextafter(total, 0)). Each thread owns a contiguous chunk; thread 0 scans the chunk
// sums in order, so a chunk's end value is exactly the next chunk's start value and the cdf is
// monotone: exactly one thread holds the crossing. Launched with kSampleThreads threads.
constexpr int kSampleThreads = 256;

extern "C" __global__ void row_sample(const float* __restrict__ probs, long long stride, int vocab,
                                      const double* __restrict__ uniforms,
                                      long long* __restrict__ out) {
  __shared__ double start[kSampleThreads + 1];
  __shared__ double s_target;
  const float* p = probs + blockIdx.x * stride;
  const int chunk = (vocab + kSampleThreads - 1) / kSampleThreads;
  const int begin = min(vocab, (int)threadIdx.x * chunk), end = min(vocab, begin + chunk);
  double local = 0.0;
  for (int i = begin; i < end; ++i) local += (double)p[i];
  start[threadIdx.x + 1] = local;
  __syncthreads();
  if (threadIdx.x == 0) {
    double running = 0.0;
    start[0] = 0.0;
    for (int t = 1; t <= kSampleThreads; ++t) {
      running = running + start[t];
      start[t] = running;
    }
    const double total = running;
    s_target = fmin(uniforms[blockIdx.x] * total, nextafter(total, 0.0));
    if (!(total > 0.0)) out[blockIdx.x] = vocab;  // every cdf entry <= target
  }
  __syncthreads();
  const double target = s_target, base = start[threadIdx.x];
  if (begin < end && base <= target && start[threadIdx.x + 1] > target) {
    double partial = 0.0;
    for (int i = begin; i < end; ++i) {
      partial += (double)p[i];
      if (base + partial > target) { out[blockIdx.x] = i; break; }
    }
  }
}
