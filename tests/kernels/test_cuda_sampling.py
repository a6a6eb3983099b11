"""CUDA sampling (kernels/cuda/sampling.py) vs the NumPy reference (kernels/reference/sampling.py),
and the Sampler end to end on the GPU vs the CPU with the same sequence states.

Exact where the operation is exact (argmax, top-logprob ranking, top-k thresholds, penalties,
bias, masks, temperature, the inverse-CDF draw given equal probabilities); softmax-based steps
differ from the reference only by float32 summation order and exp's last bit.
"""
from __future__ import annotations

import numpy as np
import pytest

from cupyserve.kernels.reference import sampling as ref
from cupyserve.runtime.sampler import Sampler, SamplingState, make_generator
from cupyserve.runtime.sampling_params import SamplingParams

pytestmark = pytest.mark.gpu

SHAPES = [(1, 49152), (256, 49152), (1, 151936), (256, 151936)]


@pytest.fixture(scope="module")
def cs():
    pytest.importorskip("cupy")
    from cupyserve.kernels.cuda import sampling

    return sampling


def _dev(x):
    import cupy

    return cupy.asarray(x)


def _host(x):
    import cupy

    return cupy.asnumpy(x)


def _logits(num_seqs: int, vocab: int, seed: int, ties: bool, scale: float = 3.0) -> np.ndarray:
    """Random logits; with `ties`, values on a coarse grid (many equal values, equal maxima at
    several ids) plus a few -inf entries."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((num_seqs, vocab)) * scale).astype(np.float32)
    if ties:
        x = (np.round(x * 2) / 2).astype(np.float32)
        for row in range(num_seqs):  # the row maximum repeated at higher ids
            best = x[row].max()
            x[row, rng.integers(0, vocab, size=3)] = best
        x[:, rng.integers(0, vocab, size=vocab // 100)] = -np.inf
    return x


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("num_seqs,vocab", SHAPES)
def test_softmaxes_greedy_and_top_logprobs(cs, num_seqs, vocab, ties):
    x = _logits(num_seqs, vocab, seed=num_seqs + vocab + ties, ties=ties)
    d = _dev(x)
    np.testing.assert_array_equal(_host(cs.greedy(d)), ref.greedy(x))
    # A column slice of a wider matrix (the model's padded output) gives the same answer.
    wide = np.concatenate([x, np.full((num_seqs, 7), 1e9, np.float32)], axis=1)
    np.testing.assert_array_equal(_host(cs.greedy(_dev(wide)[:, :vocab])), ref.greedy(x))

    ref_lp = ref.log_softmax(x)
    lp = _host(cs.log_softmax(d))
    finite = np.isfinite(ref_lp)
    np.testing.assert_array_equal(np.isfinite(lp), finite)
    np.testing.assert_allclose(lp[finite], ref_lp[finite], rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(_host(cs.softmax(d)), ref.softmax(x), rtol=5e-5, atol=1e-10)

    for k in (1, 5, 20):
        ids, values = cs.top_logprobs(_dev(ref_lp), k)  # the same input: exact ranking
        ref_ids, ref_values = ref.top_logprobs(ref_lp, k)
        assert ids.dtype == np.int64 and ids.shape == (num_seqs, k)
        np.testing.assert_array_equal(_host(ids), ref_ids)
        np.testing.assert_array_equal(_host(values), ref_values)


@pytest.mark.parametrize("num_seqs,vocab", SHAPES)
def test_counts_bias_penalties_masks_temperature(cs, num_seqs, vocab):
    rng = np.random.default_rng(vocab + num_seqs)
    x = _logits(num_seqs, vocab, seed=7, ties=True)
    prompt = rng.integers(-1, vocab + 3, size=(num_seqs, 40))
    output = rng.integers(0, min(vocab, 500), size=(num_seqs, 60))
    output[:, 50:] = -1
    counts = ref.token_counts(output, vocab)
    d_counts = cs.token_counts(output, vocab)
    np.testing.assert_array_equal(_host(d_counts), counts)
    seen = (ref.token_counts(prompt, vocab) > 0) | (counts > 0)
    np.testing.assert_array_equal(_host(cs.token_counts(_dev(prompt), vocab)) > 0,
                                  ref.token_counts(prompt, vocab) > 0)

    entries = 3 * num_seqs
    rows = rng.integers(0, num_seqs, size=entries)
    ids = rng.integers(0, vocab, size=entries)
    rows[:2], ids[:2] = rows[2], ids[2]  # a repeated (row, token) pair adds up
    biases = (rng.integers(-40, 40, size=entries) / 4).astype(np.float32)  # exact sums
    expected = ref.apply_logit_bias(x.copy(), rows, ids, biases)
    np.testing.assert_array_equal(_host(cs.apply_logit_bias(_dev(x), rows, ids, biases)), expected)

    repetition = rng.choice([1.0, 1.1, 1.3, 0.8], size=num_seqs).astype(np.float32)
    presence = rng.choice([0.0, 0.5, -0.25], size=num_seqs).astype(np.float32)
    frequency = rng.choice([0.0, 0.3, 1.7], size=num_seqs).astype(np.float32)
    expected = ref.apply_penalties(x.copy(), seen, counts, repetition, presence, frequency)
    got = cs.apply_penalties(_dev(x), _dev(seen), d_counts, repetition, presence, frequency)
    np.testing.assert_array_equal(_host(got), expected)

    expected = ref.mask_tokens(x.copy(), rows, ids)
    np.testing.assert_array_equal(_host(cs.mask_tokens(_dev(x), rows, ids)), expected)

    temperatures = rng.uniform(0.05, 2.5, size=num_seqs).astype(np.float32)
    expected = ref.apply_temperature(x.copy(), temperatures)
    np.testing.assert_array_equal(_host(cs.apply_temperature(_dev(x), temperatures)), expected)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("num_seqs,vocab", SHAPES)
def test_top_k_is_exact(cs, num_seqs, vocab, ties):
    x = _logits(num_seqs, vocab, seed=11 + ties, ties=ties)
    choices = np.array([0, -3, 1, 2, 40, 1000, vocab - 1, vocab, vocab + 5])
    top_k = choices[np.arange(num_seqs) % len(choices)] if num_seqs > 1 else np.array([40])
    expected = ref.apply_top_k(x.copy(), top_k)
    got = _host(cs.apply_top_k(_dev(x), top_k))
    np.testing.assert_array_equal(got, expected)
    # Rows whose filter is off are bit-for-bit unchanged.
    off = (top_k <= 0) | (top_k >= vocab)
    np.testing.assert_array_equal(got[off], x[off])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("num_seqs,vocab", SHAPES)
def test_top_p_and_min_p(cs, num_seqs, vocab, ties):
    x = _logits(num_seqs, vocab, seed=13 + ties, ties=ties, scale=6.0)
    rng = np.random.default_rng(vocab)
    top_p = rng.choice([1.0, 0.5, 0.9, 0.95, 0.1], size=num_seqs).astype(np.float32)
    if num_seqs == 1:
        top_p[:] = 0.9
    expected = np.isfinite(ref.apply_top_p(x.copy(), top_p))
    got = np.isfinite(_host(cs.apply_top_p(_dev(x), top_p)))
    _assert_masks_agree(got, expected)
    off = top_p >= 1.0
    np.testing.assert_array_equal(_host(cs.apply_top_p(_dev(x), top_p))[off], x[off])

    min_p = rng.choice([0.0, 0.05, 0.1, 0.5], size=num_seqs).astype(np.float32)
    if num_seqs == 1:
        min_p[:] = 0.05
    expected = np.isfinite(ref.apply_min_p(x.copy(), min_p))
    got_values = _host(cs.apply_min_p(_dev(x), min_p))
    _assert_masks_agree(np.isfinite(got_values), expected)
    np.testing.assert_array_equal(got_values[min_p <= 0], x[min_p <= 0])


def _assert_masks_agree(got: np.ndarray, expected: np.ndarray) -> None:
    """Kept sets equal, except that a token at the very boundary may flip (summation order and
    exp's last bit): at most 2 tokens in at most 2% of the rows."""
    differing = (got != expected).sum(axis=-1)
    assert differing.max() <= 2, differing.max()
    assert (differing > 0).mean() <= 0.02, (differing > 0).mean()


@pytest.mark.parametrize("num_seqs,vocab", SHAPES)
def test_sample_matches_given_equal_probabilities(cs, num_seqs, vocab):
    rng = np.random.default_rng(vocab * 3 + num_seqs)
    x = _logits(num_seqs, vocab, seed=17, ties=True, scale=2.0)
    x = ref.apply_top_k(x, np.full(num_seqs, 500))  # zeros in the distribution
    probs = ref.softmax(x)
    uniforms = rng.random(num_seqs)
    uniforms[:3] = [0.0, 0.5, np.nextafter(1.0, 0.0)][: num_seqs]
    expected = ref.sample(probs, uniforms)
    got = _host(cs.sample(_dev(probs), uniforms))
    np.testing.assert_array_equal(got, expected)
    assert np.all(probs[np.arange(num_seqs), got] > 0)
    zero = np.zeros((2, vocab), np.float32)  # no mass at all: the reference answers vocab
    np.testing.assert_array_equal(_host(cs.sample(_dev(zero), np.array([0.3, 0.9]))),
                                  ref.sample(zero, np.array([0.3, 0.9])))


def _states(num_seqs: int, vocab: int, seed: int) -> list[SamplingState]:
    rng = np.random.default_rng(seed)
    kinds = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.0, logprobs=5),
        SamplingParams(temperature=0.8, seed=1),
        SamplingParams(temperature=1.0, top_k=40, logprobs=3),
        SamplingParams(temperature=0.7, top_p=0.9),
        SamplingParams(temperature=1.2, min_p=0.05),
        SamplingParams(temperature=0.0, repetition_penalty=1.3, presence_penalty=0.5,
                       frequency_penalty=0.25),
        SamplingParams(temperature=0.9, logit_bias=((5, 7.5), (11, -100.0)), min_tokens=4),
    ]
    states = []
    for row in range(num_seqs):
        params = kinds[row % len(kinds)]
        prompt = rng.integers(0, vocab, size=16).tolist()
        output = rng.integers(0, vocab, size=row % 5).tolist()
        states.append(SamplingState(params, prompt, output, [2, 3],
                                    make_generator(params.seed, request_index=row)))
    return states


@pytest.mark.parametrize("num_seqs,vocab", [(1, 49152), (64, 49152), (256, 151936)])
def test_sampler_cuda_matches_cpu(cs, num_seqs, vocab):
    """Same logits and the same sequence states (fresh generators each side): identical token ids
    for greedy and seeded rows, the same top logprob ids, logprob values within float32 noise."""
    x = _logits(num_seqs, vocab + 64, seed=num_seqs, ties=False, scale=6.0)  # padded columns
    cpu = Sampler(vocab).sample(x, _states(num_seqs, vocab, seed=5))
    gpu = Sampler(vocab, cs).sample(_dev(x), _states(num_seqs, vocab, seed=5))
    assert [r.token_id for r in gpu] == [r.token_id for r in cpu]
    for g, c in zip(gpu, cpu):
        assert (g.logprob is None) == (c.logprob is None)
        if c.logprob is None:
            continue
        assert g.logprob.token_id == c.logprob.token_id
        assert abs(g.logprob.logprob - c.logprob.logprob) < 1e-4
        assert [t for t, _ in g.logprob.top] == [t for t, _ in c.logprob.top]
        np.testing.assert_allclose([v for _, v in g.logprob.top], [v for _, v in c.logprob.top],
                                   atol=1e-4)


def test_sampler_cuda_seeded_steps_stay_identical(cs):
    """Several steps of seeded sampling: each step's draw consumes one uniform per sequence on
    both backends, so the streams stay in lockstep."""
    vocab, num_seqs = 49152, 16
    cpu_states = _states(num_seqs, vocab, seed=9)
    gpu_states = _states(num_seqs, vocab, seed=9)
    cpu_sampler, gpu_sampler = Sampler(vocab), Sampler(vocab, cs)
    for step in range(4):
        x = _logits(num_seqs, vocab, seed=100 + step, ties=False, scale=5.0)
        cpu = [r.token_id for r in cpu_sampler.sample(x, cpu_states)]
        gpu = [r.token_id for r in gpu_sampler.sample(_dev(x), gpu_states)]
        assert gpu == cpu, step
        for states, ids in ((cpu_states, cpu), (gpu_states, gpu)):
            for s, t in zip(states, ids):
                s.output_ids = list(s.output_ids) + [t]


def test_op_sets_expose_sampling(cs):
    from cupyserve.kernels import get_ops

    assert get_ops("cpu").sampling is ref
    assert get_ops("cuda").sampling is cs
    for name in ("log_softmax", "softmax", "top_logprobs", "greedy", "token_counts",
                 "apply_logit_bias", "apply_penalties", "mask_tokens", "apply_temperature",
                 "apply_top_k", "apply_top_p", "apply_min_p", "sample", "to_host"):
        assert callable(getattr(cs, name)), name
