"""Token-sampling reference kernels: batched, array-in/array-out, float32 on [num_seqs, vocab_size].

These functions know nothing of requests. Every per-sequence setting arrives as a per-row array, and
a row whose setting means "off" (top_k <= 0, top_p >= 1, min_p <= 0, repetition == 1, ...) is left
bit-for-bit unchanged, so the caller may pass a whole group of rows without filtering first.

Conventions shared with the CUDA twin (same names, same signatures):
- `apply_*` functions modify `logits` IN PLACE and return it (the caller owns a working copy).
- Filters remove a token by setting its logit to -inf; they never renormalize (softmax does that).
- Supports are defined by value thresholds, so a filter's result never depends on how ties are
  ordered: every token tied with the last kept one is kept too.
- Each row is computed on its own: a row's result is identical whatever other rows share the batch.
- Where a token id must be picked among equal values (argmax, top-logprob ranking) the lower id wins.
"""
from __future__ import annotations

import numpy as np

xp = np  # the array module of this op set (the CUDA twin: cupy)
NEG_INF = np.float32(-np.inf)


def to_host(x: np.ndarray) -> np.ndarray:
    """Returns `x` as a NumPy array (the CUDA twin copies device -> host here)."""
    return np.asarray(x)


def log_softmax(
    logits: np.ndarray,  # [num_seqs, vocab_size] float32
) -> np.ndarray:  # [num_seqs, vocab_size] float32
    """Row-wise log-softmax, stable for large logits; -inf logits give -inf."""
    row_max = logits.max(axis=-1, keepdims=True)
    shifted = logits - row_max
    log_norm = np.log(np.exp(shifted).sum(axis=-1, keepdims=True, dtype=np.float32))
    return (shifted - log_norm).astype(np.float32, copy=False)


def softmax(
    logits: np.ndarray,  # [num_seqs, vocab_size] float32
) -> np.ndarray:  # [num_seqs, vocab_size] float32
    """Row-wise softmax; -inf logits get probability exactly 0."""
    row_max = logits.max(axis=-1, keepdims=True)
    unnormalized = np.exp(logits - row_max)
    return (unnormalized / unnormalized.sum(axis=-1, keepdims=True, dtype=np.float32)).astype(
        np.float32, copy=False)


def top_logprobs(
    logprobs: np.ndarray,  # [num_seqs, vocab_size] float32
    k: int,
) -> tuple[np.ndarray, np.ndarray]:  # (ids [num_seqs, k] int64, values [num_seqs, k] float32)
    """The k best entries of each row, best first; equal values are ranked lower id first.

    k is clamped to vocab_size.
    """
    num_seqs, vocab_size = logprobs.shape
    k = min(max(int(k), 0), vocab_size)
    ids = np.zeros((num_seqs, k), np.int64)
    if k == 0:
        return ids, np.zeros((num_seqs, 0), np.float32)
    # A partition finds each row's k-th value in O(vocab); only the few candidates >= it are sorted.
    kth_value = np.partition(logprobs, vocab_size - k, axis=-1)[:, vocab_size - k]
    for row in range(num_seqs):
        candidates = np.flatnonzero(logprobs[row] >= kth_value[row])
        best_first = np.lexsort((candidates, -logprobs[row, candidates]))  # value desc, then id asc
        ids[row] = candidates[best_first[:k]]
    return ids, np.take_along_axis(logprobs, ids, axis=-1)


def greedy(
    logits: np.ndarray,  # [num_seqs, vocab_size] float32
) -> np.ndarray:  # [num_seqs] int64
    """Argmax of each row; the lowest id wins a tie (NumPy returns the first maximum)."""
    return np.argmax(logits, axis=-1).astype(np.int64, copy=False)


def token_counts(
    token_ids: np.ndarray,  # [num_seqs, max_len] int, padded with -1
    vocab_size: int,
) -> np.ndarray:  # [num_seqs, vocab_size] int32
    """How many times each token id occurs in each row; ids outside [0, vocab_size) are ignored."""
    num_seqs = token_ids.shape[0]
    rows = np.broadcast_to(np.arange(num_seqs)[:, None], token_ids.shape)
    valid = (token_ids >= 0) & (token_ids < vocab_size)
    # One bincount over flattened (row, id) positions: vectorized, and an invalid id cannot spill
    # into the next row because it was filtered out above.
    flat = rows[valid].astype(np.int64) * vocab_size + token_ids[valid].astype(np.int64)
    counts = np.bincount(flat, minlength=num_seqs * vocab_size)
    return counts.reshape(num_seqs, vocab_size).astype(np.int32)


def apply_logit_bias(
    logits: np.ndarray,  # [num_seqs, vocab_size] float32
    rows: np.ndarray,  # [num_entries] int: row of each bias entry
    token_ids: np.ndarray,  # [num_entries] int: token of each entry, in [0, vocab_size)
    biases: np.ndarray,  # [num_entries] float32: added to that token's logit
) -> np.ndarray:  # [num_seqs, vocab_size] float32, the same array
    """Adds each bias to its (row, token) logit, in place; repeated pairs add up."""
    np.add.at(logits, (rows, token_ids), biases.astype(np.float32, copy=False))
    return logits


def apply_penalties(
    logits: np.ndarray,  # [num_seqs, vocab_size] float32
    seen_mask: np.ndarray,  # [num_seqs, vocab_size] bool: token occurs in prompt or output
    output_counts: np.ndarray,  # [num_seqs, vocab_size] int: occurrences in the output only
    repetition: np.ndarray,  # [num_seqs] float32, 1 = off
    presence: np.ndarray,  # [num_seqs] float32, 0 = off
    frequency: np.ndarray,  # [num_seqs] float32, 0 = off
) -> np.ndarray:  # [num_seqs, vocab_size] float32, the same array
    """Repetition, then presence and frequency penalties, in place.

    Repetition (CTRL / llama.cpp / vLLM): for every token in `seen_mask` a positive logit is
    divided by `repetition` and a non-positive one multiplied by it, so r > 1 always makes the
    token less likely. Presence and frequency (OpenAI): logit -= frequency * count
    + presence * (count > 0), where count is `output_counts`.
    """
    rep = repetition.astype(np.float32, copy=False)[:, None]
    penalize = seen_mask & (rep != 1.0)
    if penalize.any():
        repeated = np.where(logits > 0, logits / rep, logits * rep)
        np.copyto(logits, repeated, where=penalize)
    counts = output_counts.astype(np.float32)
    additive = (frequency.astype(np.float32, copy=False)[:, None] * counts
                + presence.astype(np.float32, copy=False)[:, None] * (counts > 0))
    logits -= additive
    return logits


def mask_tokens(
    logits: np.ndarray,  # [num_seqs, vocab_size] float32
    rows: np.ndarray,  # [num_entries] int
    token_ids: np.ndarray,  # [num_entries] int, in [0, vocab_size)
) -> np.ndarray:  # [num_seqs, vocab_size] float32, the same array
    """Sets each listed (row, token) logit to -inf, in place (used to forbid EOS before min_tokens)."""
    logits[rows, token_ids] = NEG_INF
    return logits


def apply_temperature(
    logits: np.ndarray,  # [num_seqs, vocab_size] float32
    temperatures: np.ndarray,  # [num_seqs] float32, every entry > 0
) -> np.ndarray:  # [num_seqs, vocab_size] float32, the same array
    """Divides each row by its temperature, in place. Temperature 0 (greedy) never reaches here."""
    logits /= temperatures.astype(np.float32, copy=False)[:, None]
    return logits


def apply_top_k(
    logits: np.ndarray,  # [num_seqs, vocab_size] float32
    top_k: np.ndarray,  # [num_seqs] int, <= 0 or >= vocab_size = off
) -> np.ndarray:  # [num_seqs, vocab_size] float32, the same array
    """Keeps, per row, every token whose logit is >= the k-th largest logit; the rest become -inf.

    Ties with the k-th value are all kept, so a row may keep more than k tokens.
    """
    vocab_size = logits.shape[-1]
    top_k = np.asarray(top_k)
    active = np.flatnonzero((top_k > 0) & (top_k < vocab_size))
    if active.size == 0:
        return logits
    # One O(vocab) partition per distinct k rather than a full sort of every row.
    for k in np.unique(top_k[active]):
        rows_k = active[top_k[active] == k]
        rows = logits[rows_k]
        kth_value = np.partition(rows, vocab_size - int(k), axis=-1)[:, vocab_size - int(k), None]
        logits[rows_k] = np.where(rows >= kth_value, rows, NEG_INF)
    return logits


def apply_top_p(
    logits: np.ndarray,  # [num_seqs, vocab_size] float32
    top_p: np.ndarray,  # [num_seqs] float32 in (0, 1], >= 1 = off
) -> np.ndarray:  # [num_seqs, vocab_size] float32, the same array
    """Nucleus filter, in place: keeps the most probable tokens whose mass first reaches top_p.

    With probabilities sorted best first, position j is kept while the mass strictly before it is
    < top_p (so the best token always survives); then every token whose probability is >= the last
    kept one's is kept, so ties at the boundary are all in. Mass is summed in float64.
    """
    top_p = np.asarray(top_p)
    active = np.flatnonzero(top_p < 1.0)
    if active.size == 0:
        return logits
    rows = logits[active]
    probs = softmax(rows)
    descending = -np.sort(-probs, axis=-1)
    mass_before = np.cumsum(descending, axis=-1, dtype=np.float64) - descending
    num_kept = (mass_before < top_p[active].astype(np.float64)[:, None]).sum(axis=-1)
    threshold = np.take_along_axis(descending, (num_kept - 1)[:, None], axis=-1)
    logits[active] = np.where(probs >= threshold, rows, NEG_INF)
    return logits


def apply_min_p(
    logits: np.ndarray,  # [num_seqs, vocab_size] float32
    min_p: np.ndarray,  # [num_seqs] float32 in [0, 1], <= 0 = off
) -> np.ndarray:  # [num_seqs, vocab_size] float32, the same array
    """Keeps tokens with probability >= min_p * (best probability), in place; the rest become -inf.

    Compared as exp(logit - max_logit) >= min_p, which is that ratio without normalizing.
    """
    min_p = np.asarray(min_p)
    active = np.flatnonzero(min_p > 0.0)
    if active.size == 0:
        return logits
    rows = logits[active]
    ratio = np.exp(rows - rows.max(axis=-1, keepdims=True))
    logits[active] = np.where(ratio >= min_p[active].astype(np.float32)[:, None], rows, NEG_INF)
    return logits


def sample(
    probs: np.ndarray,  # [num_seqs, vocab_size] float32, rows need not sum exactly to 1
    uniforms: np.ndarray,  # [num_seqs] float64 in [0, 1): one draw per row
) -> np.ndarray:  # [num_seqs] int64
    """Inverse-CDF draw: the first token whose cumulative mass exceeds uniform * total mass.

    A token with probability 0 is never chosen. Given the same row and uniform the answer is the
    same whatever else is in the batch, which makes seeded sampling batch-invariant.
    """
    cdf = np.cumsum(probs, axis=-1, dtype=np.float64)  # [num_seqs, vocab_size]
    total = cdf[:, -1:]
    # u < 1, but u * total can round up to total; stay strictly below so some token qualifies.
    target = np.minimum(np.asarray(uniforms, dtype=np.float64)[:, None] * total,
                        np.nextafter(total, 0.0))
    # Number of cdf entries <= target is the index of the first entry > target.
    return (cdf <= target).sum(axis=-1).astype(np.int64)
