"""Token sampling on the GPU: the CUDA twin of `kernels.reference.sampling` (same functions, same
signatures, same conventions; read the reference for each contract).

Inputs are `[num_seqs, vocab_size]` float32 device arrays (rows may be a column slice of a wider
matrix); per-row settings and index arrays may be host (NumPy) or device arrays and are uploaded
when needed. Results stay on the device except `to_host`, which the sampler calls on the small
outputs only (token ids, top-N logprobs).

Numerics against the reference: argmax / top-logprob ranking / top-k thresholds are exact (radix
select on order keys, the lower id wins ties); penalties, temperature, bias and masks are the same
float32 operations one by one (no FMA contraction); softmax, log_softmax, min_p and top_p differ
only in the order of float32 sums and in `exp`'s last bit; the inverse-CDF draw sums in float64
like the reference, in a different order (relative difference ~1e-16, so a draw differs only when
the uniform lands that close to a cdf step).
"""
from __future__ import annotations

import cupy
import cupyx
import numpy as np

from .module_cache import launch

xp = cupy
NEG_INF = np.float32(-np.inf)
_THREADS = 1024
_SAMPLE_THREADS = 256  # kSampleThreads in sampling.cu


def to_host(x) -> np.ndarray:
    """Copies a device array to the host (host arrays pass through)."""
    if isinstance(x, cupy.ndarray):
        return cupy.asnumpy(x)
    return np.asarray(x)


def _device(x, dtype=None) -> cupy.ndarray:
    return cupy.asarray(x, dtype=dtype)


def _rows_view(x: cupy.ndarray) -> tuple[cupy.ndarray, int]:
    """(array whose rows are unit-stride float32, row stride in elements) without copying a
    column slice of a contiguous matrix."""
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    if x.shape[0] <= 1 and x.flags.c_contiguous:
        return x, x.shape[1]
    if x.strides[1] == 4 and x.strides[0] % 4 == 0 and x.strides[0] >= 4 * x.shape[1]:
        return x, x.strides[0] // 4
    x = cupy.ascontiguousarray(x)
    return x, x.shape[1]


def log_softmax(
    logits: cupy.ndarray,  # [num_seqs, vocab_size] float32
) -> cupy.ndarray:  # [num_seqs, vocab_size] float32
    row_max = logits.max(axis=-1, keepdims=True)
    shifted = logits - row_max
    log_norm = cupy.log(cupy.exp(shifted).sum(axis=-1, keepdims=True, dtype=np.float32))
    return (shifted - log_norm).astype(np.float32, copy=False)


def softmax(
    logits: cupy.ndarray,  # [num_seqs, vocab_size] float32
) -> cupy.ndarray:  # [num_seqs, vocab_size] float32
    row_max = logits.max(axis=-1, keepdims=True)
    unnormalized = cupy.exp(logits - row_max)
    return (unnormalized / unnormalized.sum(axis=-1, keepdims=True, dtype=np.float32)).astype(
        np.float32, copy=False)


def top_logprobs(
    logprobs: cupy.ndarray,  # [num_seqs, vocab_size] float32
    k: int,
) -> tuple[cupy.ndarray, cupy.ndarray]:  # (ids [num_seqs, k] int64, values [num_seqs, k] float32)
    """k rounds of a block argmax per row (k is small: OpenAI allows at most 20)."""
    num_seqs, vocab_size = logprobs.shape
    k = min(max(int(k), 0), vocab_size)
    ids = cupy.empty((num_seqs, k), np.int64)
    values = cupy.empty((num_seqs, k), np.float32)
    if k == 0 or num_seqs == 0:
        return ids, values
    x, stride = _rows_view(logprobs)
    launch("sampling.cu", "row_top_k", (num_seqs,), (_THREADS,),
           (x, np.int64(stride), np.int32(vocab_size), np.int32(k), ids, values))
    return ids, values


def greedy(
    logits: cupy.ndarray,  # [num_seqs, vocab_size] float32
) -> cupy.ndarray:  # [num_seqs] int64
    num_seqs, vocab_size = logits.shape
    out = cupy.empty(num_seqs, np.int64)
    if num_seqs:
        x, stride = _rows_view(logits)
        launch("sampling.cu", "row_argmax", (num_seqs,), (_THREADS,),
               (x, np.int64(stride), np.int32(vocab_size), out))
    return out


def token_counts(
    token_ids,  # [num_seqs, max_len] int, padded with -1 (host or device)
    vocab_size: int,
) -> cupy.ndarray:  # [num_seqs, vocab_size] int32
    token_ids = _device(token_ids, np.int64)
    num_seqs = token_ids.shape[0]
    size = num_seqs * vocab_size
    valid = (token_ids >= 0) & (token_ids < vocab_size)
    # Invalid ids land in one extra slot past the end (no boolean indexing: no host sync).
    flat = cupy.where(valid, cupy.arange(num_seqs, dtype=np.int64)[:, None] * vocab_size + token_ids,
                      size).ravel()
    counts = cupy.zeros(size + 1, np.int32)
    if flat.size:
        cupyx.scatter_add(counts, flat, cupy.ones(flat.size, np.int32))
    counts = counts[:size]
    return counts.reshape(num_seqs, vocab_size)


def apply_logit_bias(
    logits: cupy.ndarray,  # [num_seqs, vocab_size] float32
    rows,  # [num_entries] int
    token_ids,  # [num_entries] int
    biases,  # [num_entries] float32
) -> cupy.ndarray:
    cupyx.scatter_add(logits, (_device(rows, np.int64), _device(token_ids, np.int64)),
                      _device(biases, np.float32))
    return logits


_penalties_kernel = cupy.ElementwiseKernel(
    "bool seen, int32 count, float32 rep, float32 presence, float32 frequency",
    "float32 logit",
    """
    float x = logit;
    if (seen && rep != 1.0f) x = x > 0.0f ? __fdiv_rn(x, rep) : __fmul_rn(x, rep);
    const float c = (float)count;
    const float additive = __fadd_rn(__fmul_rn(frequency, c), __fmul_rn(presence, c > 0.0f ? 1.0f : 0.0f));
    logit = __fsub_rn(x, additive);
    """,
    "cupyserve_apply_penalties")


def apply_penalties(
    logits: cupy.ndarray,  # [num_seqs, vocab_size] float32
    seen_mask,  # [num_seqs, vocab_size] bool
    output_counts,  # [num_seqs, vocab_size] int
    repetition,  # [num_seqs] float32, 1 = off
    presence,  # [num_seqs] float32, 0 = off
    frequency,  # [num_seqs] float32, 0 = off
) -> cupy.ndarray:
    _penalties_kernel(_device(seen_mask, np.bool_), _device(output_counts, np.int32),
                      _device(repetition, np.float32)[:, None], _device(presence, np.float32)[:, None],
                      _device(frequency, np.float32)[:, None], logits)
    return logits


def mask_tokens(
    logits: cupy.ndarray,  # [num_seqs, vocab_size] float32
    rows,  # [num_entries] int
    token_ids,  # [num_entries] int
) -> cupy.ndarray:
    logits[_device(rows, np.int64), _device(token_ids, np.int64)] = NEG_INF
    return logits


def apply_temperature(
    logits: cupy.ndarray,  # [num_seqs, vocab_size] float32
    temperatures,  # [num_seqs] float32, every entry > 0
) -> cupy.ndarray:
    logits /= _device(temperatures, np.float32)[:, None]
    return logits


_below_threshold_kernel = cupy.ElementwiseKernel(
    "float32 threshold, bool active", "float32 logit",
    "if (active && logit < threshold) logit = __int_as_float(0xff800000);",
    "cupyserve_drop_below")


def apply_top_k(
    logits: cupy.ndarray,  # [num_seqs, vocab_size] float32
    top_k,  # [num_seqs] int, <= 0 or >= vocab_size = off
) -> cupy.ndarray:
    """The exact k-th largest logit per row (radix select), then every logit below it -> -inf."""
    num_seqs, vocab_size = logits.shape
    top_k_host = np.asarray(to_host(top_k), np.int64)
    active = (top_k_host > 0) & (top_k_host < vocab_size)
    if num_seqs == 0 or not active.any():
        return logits
    kth = cupy.empty(num_seqs, np.float32)
    x, stride = _rows_view(logits)
    launch("sampling.cu", "row_kth_largest", (num_seqs,), (_THREADS,),
           (x, np.int64(stride), np.int32(vocab_size), cupy.asarray(top_k_host), kth))
    _below_threshold_kernel(kth[:, None], cupy.asarray(active)[:, None], logits)
    return logits


def apply_top_p(
    logits: cupy.ndarray,  # [num_seqs, vocab_size] float32
    top_p,  # [num_seqs] float32 in (0, 1], >= 1 = off
) -> cupy.ndarray:
    top_p_host = np.asarray(to_host(top_p))
    active = np.flatnonzero(top_p_host < 1.0)
    if active.size == 0:
        return logits
    all_rows = active.size == logits.shape[0]
    rows = logits if all_rows else logits[cupy.asarray(active)]
    probs = softmax(rows)
    descending = -cupy.sort(-probs, axis=-1)
    mass_before = cupy.cumsum(descending, axis=-1, dtype=np.float64) - descending
    limit = cupy.asarray(top_p_host[active].astype(np.float64))[:, None]
    num_kept = (mass_before < limit).sum(axis=-1)
    threshold = cupy.take_along_axis(descending, (num_kept - 1)[:, None], axis=-1)
    kept = cupy.where(probs >= threshold, rows, NEG_INF)
    if all_rows:
        logits[...] = kept
    else:
        logits[cupy.asarray(active)] = kept
    return logits


_min_p_kernel = cupy.ElementwiseKernel(
    "float32 row_max, float32 min_p, bool active", "float32 logit",
    "if (active && !(expf(logit - row_max) >= min_p)) logit = __int_as_float(0xff800000);",
    "cupyserve_min_p")


def apply_min_p(
    logits: cupy.ndarray,  # [num_seqs, vocab_size] float32
    min_p,  # [num_seqs] float32 in [0, 1], <= 0 = off
) -> cupy.ndarray:
    min_p_host = np.asarray(to_host(min_p), np.float32)
    active = min_p_host > 0.0
    if not active.any():
        return logits
    row_max = logits.max(axis=-1, keepdims=True)
    _min_p_kernel(row_max, cupy.asarray(min_p_host)[:, None], cupy.asarray(active)[:, None], logits)
    return logits


def sample(
    probs: cupy.ndarray,  # [num_seqs, vocab_size] float32
    uniforms,  # [num_seqs] float64 in [0, 1), drawn on the host by each sequence's generator
) -> cupy.ndarray:  # [num_seqs] int64
    num_seqs, vocab_size = probs.shape
    out = cupy.empty(num_seqs, np.int64)
    if num_seqs:
        x, stride = _rows_view(probs)
        launch("sampling.cu", "row_sample", (num_seqs,), (_SAMPLE_THREADS,),
               (x, np.int64(stride), np.int32(vocab_size), _device(uniforms, np.float64), out))
    return out
