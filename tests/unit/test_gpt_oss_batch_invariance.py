"""Batch invariance of the gpt-oss model (synthetic MXFP4_MOE fixture, NumPy backend): a request's
tokens and logprobs are the same alone as among others, through chunked prefills (a 16-token step
budget, so prompts longer than the 16-token sliding window are split) and prefix-cache hits. MoE
routing is per token and sliding layers see only their window, so neither may depend on the batch."""
from __future__ import annotations

import sys
from pathlib import Path

from cupyserve.runtime.engine import LLMEngine
from cupyserve.runtime.engine_args import EngineArgs
from cupyserve.runtime.sampling_params import SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oracle"))
from make_synthetic_gpt_oss_gguf import FIXTURE  # noqa: E402

PROMPTS = ["Once upon a time, in a small village by the sea, there lived an old fisherman who",
           "The capital of France is", "def fibonacci(n):\n    return", "1, 2, 3, 4, 5, 6, 7, 8, 9,",
           "HelloWorld it's a camelCase test", "<|start|>user<|message|>Hi there<|end|>"]
PARAMS = SamplingParams(max_tokens=6, temperature=0.0, logprobs=3, ignore_eos=True)


def run(engine: LLMEngine, prompts: dict[str, list[int]]) -> dict[str, list]:
    for request_id, ids in prompts.items():
        engine.add_request(request_id, ids, PARAMS)
    results: dict[str, list] = {request_id: [] for request_id in prompts}
    while engine.has_unfinished():
        for out in engine.step():
            results[out.request_id].extend((lp.token_id, lp.logprob, tuple(lp.top)) for lp in out.logprobs)
        engine.block_manager.check_integrity()
    return results


def test_tokens_and_logprobs_do_not_depend_on_the_batch():
    engine = LLMEngine(EngineArgs(model=str(FIXTURE), device="cpu", max_num_seqs=8,
                                  kv_cache_memory=8 << 20, max_num_batched_tokens=16))
    prompts = {f"p{i}": engine.tokenizer.encode(text) for i, text in enumerate(PROMPTS)}
    assert max(len(ids) for ids in prompts.values()) > 16  # crosses the window and the step budget
    solo = {}
    for request_id, ids in prompts.items():
        solo.update(run(engine, {request_id: ids}))
    together = run(engine, {f"{request_id}-again": ids for request_id, ids in prompts.items()})
    for request_id in prompts:
        assert together[f"{request_id}-again"] == solo[request_id], request_id
        assert len(solo[request_id]) == PARAMS.max_tokens
