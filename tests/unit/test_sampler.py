"""Sampling: reference kernels against per-row Python, hand-computed cases, and the Sampler's
contracts (greedy, seeding, batch invariance, distribution, min_tokens, logprobs)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cupyserve.kernels.reference import sampling as ops
from cupyserve.runtime.sampler import Sampler, SamplingState, make_generator
from cupyserve.runtime.sampling_params import SamplingParams

VOCAB = 64


def random_logits(seed: int, num_seqs: int = 6, vocab: int = VOCAB) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((num_seqs, vocab)) * 3).astype(np.float32)


def state(params: SamplingParams, seed: int | None = 0, prompt=(), output=(), eos=()) -> SamplingState:
    rng = None if seed is None else make_generator(seed)
    return SamplingState(params, list(prompt), list(output), list(eos), rng)


# ---- per-row Python versions of the documented contracts ----

def naive_softmax(row) -> list[float]:
    m = max(row)
    exps = [math.exp(x - m) if x != -math.inf else 0.0 for x in row]
    return [e / sum(exps) for e in exps]


def naive_top_k_keep(row, k) -> list[bool]:
    if k <= 0 or k >= len(row):
        return [True] * len(row)
    kth = sorted(row, reverse=True)[k - 1]
    return [x >= kth for x in row]


def naive_top_p_keep(row, p) -> list[bool]:
    if p >= 1.0:
        return [True] * len(row)
    probs = naive_softmax(row)
    mass, last_kept = 0.0, None
    for q in sorted(probs, reverse=True):
        if mass >= p:
            break
        mass += q
        last_kept = q
    return [q >= last_kept for q in probs]


def naive_min_p_keep(row, min_p) -> list[bool]:
    probs = naive_softmax(row)
    return [q >= min_p * max(probs) for q in probs]


def keep_mask(filtered: np.ndarray) -> np.ndarray:
    return np.isfinite(filtered)


# ---- reference kernels ----

def test_log_softmax_and_softmax_match_python():
    logits = random_logits(1)
    for row, lp, pr in zip(logits, ops.log_softmax(logits), ops.softmax(logits)):
        expected = naive_softmax([float(x) for x in row])
        np.testing.assert_allclose(pr, expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(lp, np.log(expected), rtol=1e-5, atol=1e-5)
    assert ops.log_softmax(logits).dtype == np.float32


def test_softmax_gives_zero_to_masked_tokens():
    logits = np.array([[0.0, -np.inf, 1.0]], np.float32)
    assert ops.softmax(logits)[0, 1] == 0.0


def test_top_logprobs_sorted_best_first_lower_id_wins_ties():
    logprobs = np.round(random_logits(2), 0)  # many ties
    assert ops.top_logprobs(logprobs, 0)[0].shape == (len(logprobs), 0)
    ids, values = ops.top_logprobs(logprobs, 7)
    for row, row_ids, row_values in zip(logprobs, ids, values):
        expected = sorted(range(VOCAB), key=lambda t: (-row[t], t))[:7]
        assert row_ids.tolist() == expected
        assert row_values.tolist() == [row[t] for t in expected]


def test_greedy_is_argmax_with_lowest_id_on_ties():
    logits = np.array([[0.0, 5.0, 1.0, 5.0], [3.0, 3.0, 3.0, 3.0], [-1.0, -2.0, -0.5, -9.0]],
                      np.float32)
    assert ops.greedy(logits).tolist() == [1, 0, 2]


def test_token_counts_match_python_and_ignore_padding_and_out_of_range():
    ids = np.array([[3, 3, 1, -1], [0, 9, 2, 2], [-1, -1, -1, -1]], np.int64)
    counts = ops.token_counts(ids, 4)
    assert counts.tolist() == [[0, 1, 0, 2], [1, 0, 2, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("seed", range(5))
def test_top_k_matches_python(seed):
    logits = np.round(random_logits(seed), 1)  # ties likely
    ks = np.array([0, 1, 3, 10, VOCAB - 1, VOCAB], np.int64)
    filtered = ops.apply_top_k(logits.copy(), ks)
    for row, k, out in zip(logits, ks, filtered):
        assert keep_mask(out).tolist() == naive_top_k_keep(row.tolist(), int(k))
        np.testing.assert_array_equal(out[keep_mask(out)], row[keep_mask(out)])


def test_top_k_keeps_ties_and_off_values_are_bitwise_noops():
    logits = np.array([[1.0, 3.0, 3.0, 2.0]] * 4, np.float32)
    out = ops.apply_top_k(logits.copy(), np.array([1, 2, 0, 4]))
    assert keep_mask(out).tolist() == [[False, True, True, False], [False, True, True, False],
                                       [True] * 4, [True] * 4]
    np.testing.assert_array_equal(out[2:], logits[2:])


@pytest.mark.parametrize("seed", range(5))
def test_top_p_matches_python(seed):
    logits = random_logits(seed)
    top_p = np.array([0.05, 0.3, 0.5, 0.8, 0.95, 1.0], np.float32)
    filtered = ops.apply_top_p(logits.copy(), top_p)
    for row, p, out in zip(logits, top_p, filtered):
        assert keep_mask(out).tolist() == naive_top_p_keep(row.astype(np.float64).tolist(), float(p))


def test_top_p_hand_cases_ties_and_noop():
    logits = np.log(np.array([[0.6, 0.25, 0.15]] * 4, np.float32))
    out = ops.apply_top_p(logits.copy(), np.array([0.55, 0.7, 0.9, 1.0], np.float32))
    assert keep_mask(out).sum(axis=1).tolist() == [1, 2, 3, 3]
    np.testing.assert_array_equal(out[3], logits[3])
    # Probabilities ~[0.47, 0.17, 0.17, 0.06, ...]: the nucleus ends on a tied token, both stay.
    tied = np.array([[2.0, 1.0, 1.0, 0.0, 0.0]], np.float32)
    assert keep_mask(ops.apply_top_p(tied.copy(), np.array([0.6], np.float32))).tolist() == [
        [True, True, True, False, False]]


@pytest.mark.parametrize("seed", range(5))
def test_min_p_matches_python(seed):
    logits = random_logits(seed)
    min_p = np.array([0.0, 0.01, 0.05, 0.2, 0.5, 1.0], np.float32)
    filtered = ops.apply_min_p(logits.copy(), min_p)
    for row, m, out in zip(logits, min_p, filtered):
        assert keep_mask(out).tolist() == naive_min_p_keep(row.astype(np.float64).tolist(), float(m))
    np.testing.assert_array_equal(filtered[0], logits[0])


def test_min_p_hand_case():
    logits = np.log(np.array([[0.5, 0.3, 0.2]], np.float32))
    assert keep_mask(ops.apply_min_p(logits.copy(), np.array([0.5], np.float32))).tolist() == [
        [True, True, False]]


def test_penalties_hand_computed():
    logits = np.array([[2.0, -1.0, 0.5, 3.0]], np.float32)
    prompt_counts = ops.token_counts(np.array([[0, 1]]), 4)
    output_counts = ops.token_counts(np.array([[2, 2]]), 4)
    out = ops.apply_penalties(logits.copy(), (prompt_counts > 0) | (output_counts > 0), output_counts,
                              np.array([2.0], np.float32), np.array([0.5], np.float32),
                              np.array([0.25], np.float32))
    # token 0: prompt only -> 2/2; token 1: prompt, negative -> -1*2;
    # token 2: output twice -> 0.5/2 - 0.25*2 - 0.5; token 3: unseen -> unchanged.
    np.testing.assert_allclose(out, [[1.0, -2.0, -0.75, 3.0]], rtol=0, atol=1e-6)


def test_penalties_off_are_noops():
    logits = random_logits(3, num_seqs=1)
    counts = ops.token_counts(np.array([[1, 2, 2, 5]]), VOCAB)
    out = ops.apply_penalties(logits.copy(), counts > 0, counts, np.array([1.0], np.float32),
                              np.zeros(1, np.float32), np.zeros(1, np.float32))
    np.testing.assert_array_equal(out, logits)


def test_sample_never_picks_zero_probability_and_covers_edges():
    probs = np.array([[0.0, 0.5, 0.0, 0.5, 0.0]] * 3, np.float32)
    picked = ops.sample(probs, np.array([0.0, 0.4999, 1.0 - 2**-53]))
    assert picked.tolist() == [1, 1, 3]


def test_sample_empirical_distribution_matches_softmax():
    logits = random_logits(4, num_seqs=1, vocab=10) / 3
    probs = ops.softmax(logits)
    draws = 40_000
    uniforms = np.random.default_rng(123).random(draws)
    picked = ops.sample(np.repeat(probs, draws, axis=0), uniforms)
    freq = np.bincount(picked, minlength=10) / draws
    assert np.max(np.abs(freq - probs[0])) < 0.01


# ---- Sampler ----

def test_sampler_greedy_picks_argmax_and_draws_nothing():
    logits = random_logits(5)
    states = [state(SamplingParams(temperature=0.0), seed=i) for i in range(len(logits))]
    before = [s.rng.bit_generator.state for s in states]
    results = Sampler(VOCAB).sample(logits, states)
    assert [r.token_id for r in results] == np.argmax(logits, axis=1).tolist()
    assert [s.rng.bit_generator.state for s in states] == before
    assert all(r.logprob is None for r in results)


def test_sampler_ignores_padding_columns():
    logits = np.zeros((1, VOCAB + 8), np.float32)
    logits[0, VOCAB + 3] = 50.0
    result = Sampler(VOCAB).sample(logits, [state(SamplingParams(temperature=0.0), seed=None)])
    assert result[0].token_id < VOCAB


def test_logit_bias_forces_and_forbids_tokens():
    logits = random_logits(6, num_seqs=2)
    sampler = Sampler(VOCAB)
    force = SamplingParams(temperature=1.0, logit_bias=((17, 100.0),))
    forbid = SamplingParams(temperature=0.0, logit_bias=((int(np.argmax(logits[1])), -100.0),))
    for seed in range(10):
        results = sampler.sample(logits, [state(force, seed=seed), state(forbid, seed=seed)])
        assert results[0].token_id == 17
        assert results[1].token_id == int(np.argsort(-logits[1], kind="stable")[1])


def test_min_tokens_masks_eos_and_stop_token_ids_until_reached():
    logits = np.zeros((1, VOCAB), np.float32)
    logits[0, 2] = 10.0  # EOS is the favourite
    logits[0, 7] = 9.0  # then a stop token id
    logits[0, 30] = 8.0
    params = SamplingParams(temperature=0.0, min_tokens=2, max_tokens=5, stop_token_ids=(7,))
    sampler = Sampler(VOCAB)
    picked = [sampler.sample(logits, [state(params, output=[5] * n, eos=[2])])[0].token_id
              for n in range(3)]
    assert picked == [30, 30, 2]


def test_same_seed_same_tokens_different_seed_different():
    logits = random_logits(7, num_seqs=1) / 4  # flat enough that draws vary
    params = SamplingParams(temperature=1.0)

    def run(seed: int) -> list[int]:
        s, sampler = state(params, seed=seed), Sampler(VOCAB)
        return [sampler.sample(logits, [s])[0].token_id for _ in range(20)]

    assert run(11) == run(11)
    assert run(11) != run(12)


def random_params(rng: np.random.Generator) -> SamplingParams:
    return SamplingParams(
        temperature=float(rng.choice([0.0, 0.5, 1.0, 1.7])),
        top_k=int(rng.choice([0, 1, 5, 20])),
        top_p=float(rng.choice([1.0, 0.9, 0.5])),
        min_p=float(rng.choice([0.0, 0.05])),
        repetition_penalty=float(rng.choice([1.0, 1.3])),
        presence_penalty=float(rng.choice([0.0, 0.5])),
        frequency_penalty=float(rng.choice([0.0, -0.3])),
        logit_bias=((int(rng.integers(VOCAB)), 3.0),) if rng.random() < 0.3 else (),
        logprobs=int(rng.integers(0, 6)) if rng.random() < 0.5 else None,
        min_tokens=int(rng.choice([0, 3])), max_tokens=8,
    )


def test_batch_invariance_row_alone_equals_row_in_batch():
    rng = np.random.default_rng(99)
    logits = random_logits(8, num_seqs=32)
    params = [random_params(rng) for _ in range(32)]
    outputs = [rng.integers(0, VOCAB, int(rng.integers(0, 4))).tolist() for _ in range(32)]
    prompts = [rng.integers(0, VOCAB, int(rng.integers(1, 10))).tolist() for _ in range(32)]

    def states():
        return [state(params[i], seed=1000 + i, prompt=prompts[i], output=outputs[i], eos=[0, 1])
                for i in range(32)]

    sampler = Sampler(VOCAB)
    batched = sampler.sample(logits, states())
    for i, s in enumerate(states()):
        alone = sampler.sample(logits[i : i + 1], [s])[0]
        assert alone == batched[i], f"row {i} differs alone vs batched"


def test_sampler_distribution_matches_tempered_softmax():
    logits = random_logits(9, num_seqs=1, vocab=8) / 3
    temperature = 0.7
    s, sampler = state(SamplingParams(temperature=temperature), seed=2024), Sampler(8)
    draws = 20_000
    picked = [sampler.sample(logits, [s])[0].token_id for _ in range(draws)]
    freq = np.bincount(picked, minlength=8) / draws
    expected = naive_softmax((logits[0] / temperature).astype(np.float64).tolist())
    assert np.max(np.abs(freq - expected)) < 0.015


@pytest.mark.parametrize("case", range(3))
def test_pipeline_matches_python_composition_in_documented_order(case):
    """bias -> penalties -> temperature -> top_k -> top_p -> min_p -> inverse-CDF with the RNG's uniform."""
    rng = np.random.default_rng(case)
    logits = random_logits(case + 50, num_seqs=1)
    params = SamplingParams(temperature=1.5, top_k=12, top_p=0.8, min_p=0.05, repetition_penalty=1.2,
                            presence_penalty=0.4, frequency_penalty=0.2, logit_bias=((3, 2.0),))
    prompt, output = rng.integers(0, VOCAB, 6).tolist(), rng.integers(0, VOCAB, 4).tolist()
    row = logits[0].astype(np.float64).tolist()
    row[3] += 2.0
    for t in set(prompt) | set(output):
        row[t] = row[t] / 1.2 if row[t] > 0 else row[t] * 1.2
    for t in set(output):
        row[t] -= 0.2 * output.count(t) + 0.4
    row = [x / 1.5 for x in row]
    for keep in (lambda r: naive_top_k_keep(r, 12), lambda r: naive_top_p_keep(r, 0.8),
                 lambda r: naive_min_p_keep(r, 0.05)):
        row = [x if k else -math.inf for x, k in zip(row, keep(row))]
    cdf = np.cumsum(naive_softmax(row))

    sampler = Sampler(VOCAB)
    for seed in range(40):
        u = make_generator(seed).random()
        expected = int(np.argmax(cdf > u * cdf[-1]))
        result = sampler.sample(logits, [state(params, seed=seed, prompt=prompt, output=output)])
        assert result[0].token_id == expected


def test_top_p_sees_the_tempered_distribution():
    # At temperature 1 token 0 holds ~0.88 of the mass, so top_p=0.85 would keep it alone; at
    # temperature 2 it holds ~0.70 and the nucleus also takes token 1 (~0.26), never 2 or 3.
    logits = np.array([[2.0, 0.0, -5.0, -5.0]], np.float32)
    params, sampler = SamplingParams(temperature=2.0, top_p=0.85), Sampler(4)
    picked = {sampler.sample(logits, [state(params, seed=seed)])[0].token_id for seed in range(200)}
    assert picked == {0, 1}


def test_logprobs_are_raw_and_include_chosen_and_top_n():
    logits = random_logits(10, num_seqs=2)
    params = [SamplingParams(temperature=0.3, repetition_penalty=1.5, logit_bias=((9, 50.0),),
                             logprobs=3),
              SamplingParams(temperature=0.0, logprobs=0)]
    results = Sampler(VOCAB).sample(logits, [state(params[0], prompt=[9, 4]), state(params[1])])
    raw = ops.log_softmax(logits)
    first, second = results[0].logprob, results[1].logprob
    assert results[0].token_id == 9 and first.token_id == 9
    assert first.logprob == pytest.approx(float(raw[0, 9]))  # raw: the bias is not in it
    ranked = np.argsort(-raw[0], kind="stable")[:3]
    assert [t for t, _ in first.top] == ranked.tolist()
    assert [v for _, v in first.top] == pytest.approx(raw[0, ranked].tolist())
    assert second.top == () and second.logprob == pytest.approx(float(raw[1].max()))


def test_make_generator_streams():
    def draws(g):
        return g.random(4).tolist()

    assert draws(make_generator(5)) == draws(make_generator(5))
    assert draws(make_generator(5)) == draws(np.random.Generator(np.random.PCG64(5)))
    assert draws(make_generator(5, choice_index=1)) != draws(make_generator(5))
    unseeded = [draws(make_generator(None, server_seed=1, request_index=i)) for i in range(2)]
    assert unseeded[0] != unseeded[1]
    assert unseeded[0] == draws(make_generator(None, server_seed=1, request_index=0))


def test_sampled_row_without_rng_is_an_error():
    with pytest.raises(ValueError):
        Sampler(VOCAB).sample(random_logits(0, num_seqs=1), [state(SamplingParams(), seed=None)])
