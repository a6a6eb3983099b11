"""Turns a batch of next-token logits plus per-sequence settings into token ids and raw logprobs.

The sampler is the only place that reads `SamplingParams` for token choice; the array work is done
by an op module (`kernels.reference.sampling` by default, its CUDA twin on a GPU) so that this file
stays free of device code. Order of operations and seeding are documented in docs/sampling.md.
"""
from __future__ import annotations

from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from ..kernels.reference import sampling as reference_sampling
from .outputs import TokenLogprob
from .sampling_params import SamplingParams

# spawn_key prefixes keeping seeded and unseeded streams apart (see make_generator).
_SEEDED_STREAM = 0
_UNSEEDED_STREAM = 1


def make_generator(
    seed: int | None,
    *,
    server_seed: int = 0,
    request_index: int = 0,
    choice_index: int = 0,
) -> np.random.Generator:
    """The per-sequence RNG the engine creates once, when the sequence is created.

    With a request seed, choice 0 is `Generator(PCG64(SeedSequence(seed)))` and choice i > 0 (the
    OpenAI `n` parameter) gets its own stream, so `n=1, seed=s` reproduces choice 0 of `n=3, seed=s`.
    Without one, the stream comes from the server seed and a per-server request counter, so an
    unseeded request is still reproducible given the server seed and its arrival order.
    """
    if seed is not None:
        key: tuple[int, ...] = () if choice_index == 0 else (_SEEDED_STREAM, choice_index)
        entropy = seed
    else:
        key = (_UNSEEDED_STREAM, request_index, choice_index)
        entropy = server_seed
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy, spawn_key=key)))


@dataclass
class SamplingState:
    """What the sampler needs to know about one sequence at one step.

    Any object with these attributes works (the engine may pass its own). `rng` may be None for a
    greedy sequence, which never draws. `output_ids` are the tokens generated so far (not including
    the one being sampled now).
    """

    params: SamplingParams
    prompt_ids: SequenceOf[int]
    output_ids: SequenceOf[int]
    eos_token_ids: SequenceOf[int]
    rng: np.random.Generator | None


@dataclass(frozen=True)
class SampleResult:
    token_id: int
    logprob: TokenLogprob | None  # set when params.logprobs is not None


class Sampler:
    """Batched token choice.

    `sample` contract: logits row i belongs to states[i]; results come back in the same order.
    `logits` lives where `ops` works (a NumPy array for the reference ops, a device array for the
    CUDA twin); only the chosen ids and the requested logprobs are copied to the host.
    Columns at or beyond `vocab_size` (padding of some output matrices) are never chosen. Each
    non-greedy sequence consumes exactly one `rng.random()` per call, greedy ones none, so a
    sequence's tokens depend only on its own logits and RNG, never on the rest of the batch.
    Token ids in `logit_bias` outside [0, vocab_size) are ignored (the server rejects them first).
    """

    def __init__(self, vocab_size: int, ops: ModuleType = reference_sampling) -> None:
        self.vocab_size = vocab_size
        self.ops = ops

    def sample(
        self,
        logits,  # [num_seqs, >= vocab_size] float32, an array of `ops.xp`
        states: SequenceOf[SamplingState],
    ) -> list[SampleResult]:
        if logits.ndim != 2 or logits.shape[0] != len(states) or logits.shape[1] < self.vocab_size:
            raise ValueError(f"logits shape {logits.shape} does not fit {len(states)} sequences "
                             f"x vocab {self.vocab_size}")
        if len(states) == 0:
            return []
        ops = self.ops
        xp = getattr(ops, "xp", np)
        raw = logits[:, : self.vocab_size]  # [num_seqs, vocab_size]
        if raw.dtype != np.float32:
            raw = raw.astype(np.float32)
        params = [s.params for s in states]
        if all(p.is_greedy and p.logprobs is None and not _needs_adjustment(s)
               for p, s in zip(params, states)):
            # The common decode batch: one argmax over the rows as they are, nothing else to do.
            return [SampleResult(int(t), None) for t in ops.to_host(ops.greedy(raw))]

        logprob_rows = np.array([i for i, p in enumerate(params) if p.logprobs is not None], np.int64)
        adjusted_rows = np.array(
            [i for i, s in enumerate(states) if _needs_adjustment(s)], np.int64)
        greedy_rows = np.array([i for i, p in enumerate(params) if p.is_greedy], np.int64)
        random_rows = np.array([i for i, p in enumerate(params) if not p.is_greedy], np.int64)

        work = raw  # [num_seqs, vocab_size]; copied before anything writes to it
        if adjusted_rows.size:
            work = raw.copy()
            adjusted_index = xp.asarray(adjusted_rows)
            work[adjusted_index] = self._adjust(work[adjusted_index],
                                                [states[i] for i in adjusted_rows])

        token_ids = np.empty(len(states), np.int64)  # [num_seqs]
        if greedy_rows.size:
            # A batch of pure greedy rows costs one argmax and no copy.
            greedy_logits = (work if greedy_rows.size == len(states)
                             else work[xp.asarray(greedy_rows)])
            token_ids[greedy_rows] = ops.to_host(ops.greedy(greedy_logits))
        if random_rows.size:
            random_logits = (work if random_rows.size == len(states)
                             else work[xp.asarray(random_rows)])
            if random_logits is raw:
                random_logits = raw.copy()  # _draw writes to its rows
            token_ids[random_rows] = self._draw(random_logits, [states[i] for i in random_rows])

        logprobs: list[TokenLogprob | None] = [None] * len(states)
        if logprob_rows.size:
            logprob_logits = (raw if logprob_rows.size == len(states)
                              else raw[xp.asarray(logprob_rows)])
            for row, entry in zip(logprob_rows, self._logprobs(logprob_logits,
                                                               token_ids[logprob_rows],
                                                               [params[i] for i in logprob_rows])):
                logprobs[row] = entry
        return [SampleResult(int(t), lp) for t, lp in zip(token_ids, logprobs)]

    def _adjust(
        self,
        logits: np.ndarray,  # [num_rows, vocab_size] float32, a private copy
        states: list[SamplingState],
    ) -> np.ndarray:  # [num_rows, vocab_size] float32
        """logit_bias -> penalties -> min_tokens mask: the steps that apply to greedy rows too."""
        ops, vocab = self.ops, self.vocab_size
        bias = [(r, t, b) for r, s in enumerate(states) for t, b in s.params.logit_bias if t < vocab]
        if bias:
            rows, ids, values = zip(*bias)
            logits = ops.apply_logit_bias(logits, np.array(rows, np.int64), np.array(ids, np.int64),
                                          np.array(values, np.float32))

        if any(_has_penalties(s.params) for s in states):
            output_counts = ops.token_counts(_padded([s.output_ids for s in states]), vocab)
            repetition = np.array([s.params.repetition_penalty for s in states], np.float32)
            if np.any(repetition != 1.0):
                seen = (ops.token_counts(_padded([s.prompt_ids for s in states]), vocab) > 0) | (
                    output_counts > 0)
            else:
                seen = output_counts > 0  # unused by the op when repetition is 1 everywhere
            logits = ops.apply_penalties(
                logits, seen, output_counts, repetition,
                np.array([s.params.presence_penalty for s in states], np.float32),
                np.array([s.params.frequency_penalty for s in states], np.float32))

        masked = [(r, t) for r, s in enumerate(states) if _min_tokens_pending(s)
                  for t in _end_token_ids(s) if 0 <= t < vocab]
        if masked:
            rows, ids = zip(*masked)
            logits = ops.mask_tokens(logits, np.array(rows, np.int64), np.array(ids, np.int64))
        return logits

    def _draw(
        self,
        logits: np.ndarray,  # [num_rows, vocab_size] float32, a private copy
        states: list[SamplingState],
    ) -> np.ndarray:  # [num_rows] int64
        """temperature -> top_k -> top_p -> min_p -> softmax -> one inverse-CDF draw per row."""
        ops = self.ops
        params = [s.params for s in states]
        logits = ops.apply_temperature(logits, np.array([p.temperature for p in params], np.float32))
        top_k = np.array([p.top_k for p in params], np.int64)
        if np.any((top_k > 0) & (top_k < self.vocab_size)):
            logits = ops.apply_top_k(logits, top_k)
        top_p = np.array([p.top_p for p in params], np.float32)
        if np.any(top_p < 1.0):
            logits = ops.apply_top_p(logits, top_p)
        min_p = np.array([p.min_p for p in params], np.float32)
        if np.any(min_p > 0.0):
            logits = ops.apply_min_p(logits, min_p)
        uniforms = np.array([_rng_of(s).random() for s in states], np.float64)  # [num_rows]
        return ops.to_host(ops.sample(ops.softmax(logits), uniforms))

    def _logprobs(
        self,
        raw,  # [num_rows, vocab_size] float32, the model's logits untouched
        chosen: np.ndarray,  # [num_rows] int64
        params: list[SamplingParams],
    ) -> list[TokenLogprob]:
        """Raw log-softmax: the chosen token's logprob and the top-N, before any sampler step."""
        ops = self.ops
        xp = getattr(ops, "xp", np)
        logprobs = ops.log_softmax(raw)  # [num_rows, vocab_size]
        chosen_values = ops.to_host(
            logprobs[xp.arange(len(params)), xp.asarray(chosen)])  # [num_rows]
        max_n = max(p.num_logprobs for p in params)
        top_ids = top_values = None
        if max_n:
            top_ids, top_values = (ops.to_host(a) for a in ops.top_logprobs(logprobs, max_n))
        entries = []
        for row, p in enumerate(params):
            n = p.num_logprobs
            top = () if not n else tuple(
                (int(t), float(v)) for t, v in zip(top_ids[row, :n], top_values[row, :n]))
            entries.append(TokenLogprob(int(chosen[row]), float(chosen_values[row]), top))
        return entries


def _has_penalties(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


def _end_token_ids(state: SamplingState) -> set[int]:
    return set(state.eos_token_ids) | set(state.params.stop_token_ids)


def _min_tokens_pending(state: SamplingState) -> bool:
    return len(state.output_ids) < state.params.min_tokens


def _needs_adjustment(state: SamplingState) -> bool:
    p = state.params
    return bool(p.logit_bias) or _has_penalties(p) or (
        _min_tokens_pending(state) and bool(_end_token_ids(state)))


def _rng_of(state: SamplingState) -> np.random.Generator:
    if state.rng is None:
        raise ValueError("a sequence with temperature > 0 needs an rng")
    return state.rng


def _padded(id_lists: list[SequenceOf[int]]) -> np.ndarray:  # [num_rows, max_len] int64, -1 pad
    width = max((len(ids) for ids in id_lists), default=0)
    out = np.full((len(id_lists), max(width, 1)), -1, np.int64)
    for row, ids in enumerate(id_lists):
        out[row, : len(ids)] = ids
    return out
