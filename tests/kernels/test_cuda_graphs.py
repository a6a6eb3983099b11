"""Decode steps replayed from CUDA graphs give what the eager (Python-launched) steps give.

Two engines on the same GGUF, one with graphs (the default on CUDA) and one with
`enforce_eager`, generate greedily for batches that land in several buckets (with padding rows):
1 and 3 sequences (fused GEMV path, buckets 1 and 4) must match bit for bit; 11 sequences
(bucket 16 vs an eager batch of 11: GEMV tiles of 8 + 8 vs 8 + 3 since the GEMV limit is 16
tokens; before, both ran on the cuBLAS path, whose algorithm may depend on the row count) must
give the same tokens with logprobs within 1e-3.
"""
from __future__ import annotations

import numpy as np
import pytest

from test_cuda_model import _model_path

pytestmark = pytest.mark.gpu
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "1, 2, 3, 4,",
           "The quick brown fox", "import numpy as np", "Water boils at", "My favourite colour is",
           "In 1492,", "The opposite of hot is", "SELECT * FROM"]


def _engine(enforce_eager: bool):
    from cupyserve.runtime.engine import LLMEngine
    from cupyserve.runtime.engine_args import EngineArgs

    return LLMEngine(EngineArgs(model=str(_model_path()), device="cuda", max_num_seqs=16,
                                max_model_len=512, kv_cache_memory=64 << 20,
                                enable_prefix_caching=False, enforce_eager=enforce_eager,
                                pull_if_missing=False))


def _generate(engine, prompts: list[str], max_tokens: int = 12):
    from cupyserve.runtime.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=0, ignore_eos=True)
    for index, prompt in enumerate(prompts):
        engine.add_request(f"r{index}", engine.tokenizer.encode(prompt), params)
    tokens = {f"r{i}": [] for i in range(len(prompts))}
    logprobs = {f"r{i}": [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
            logprobs[out.request_id] += [lp.logprob for lp in out.logprobs or []]
    return tokens, logprobs


@pytest.fixture(scope="module")
def engines(cuda_ops):
    return _engine(False), _engine(True)


def test_graphs_are_captured_for_every_bucket(engines):
    graphed, eager = engines
    assert eager.decode_graphs is None
    assert graphed.decode_graphs.sizes == [1, 2, 4, 8, 16]


@pytest.mark.parametrize("num_seqs", [1, 3, 11])
def test_graph_decode_matches_eager_decode(engines, num_seqs):
    graphed, eager = engines
    replays_before = graphed.decode_graphs.num_replays
    tokens_g, logprobs_g = _generate(graphed, PROMPTS[:num_seqs])
    tokens_e, logprobs_e = _generate(eager, PROMPTS[:num_seqs])
    # 12 tokens: the first comes from the prefill step, the other 11 from decode steps.
    assert graphed.decode_graphs.num_replays - replays_before >= 11
    assert tokens_g == tokens_e
    diffs = [abs(a - b) for rid in logprobs_g for a, b in zip(logprobs_g[rid], logprobs_e[rid])]
    assert len(diffs) == 12 * num_seqs
    bound = 0.0 if num_seqs <= 8 else 1e-3
    assert max(diffs) <= bound, f"max logprob difference {max(diffs)}"


def test_graph_replays_leave_the_engine_reusable(engines):
    """After graph steps, a mixed prefill + decode schedule still runs eagerly and correctly."""
    graphed, eager = engines
    assert _generate(graphed, PROMPTS[:2], 4)[0] == _generate(eager, PROMPTS[:2], 4)[0]
    assert np.all([b.graph is not None for b in graphed.decode_graphs.buckets.values()])
