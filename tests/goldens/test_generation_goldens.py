"""Greedy generation and raw logprobs vs llama.cpp on the real SmolLM2 (rules: goldens/README.md)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cupyserve.runtime.engine import LLMEngine
from cupyserve.runtime.engine_args import EngineArgs
from cupyserve.runtime.perplexity import evaluate_perplexity
from cupyserve.runtime.sampling_params import SamplingParams

NEAR_TIE_NATS = 0.1
MAX_MEAN_LOGPROB_ERROR = 0.1


@pytest.fixture(scope="module")
def engine(smollm2_gguf):
    return LLMEngine(EngineArgs(model=str(smollm2_gguf), device="cpu", max_num_seqs=8,
                                kv_cache_memory=64 << 20))


@pytest.fixture(scope="module")
def goldens(shared):
    with open(shared / "goldens" / "smollm2-135m-instruct-q4_1.json") as f:
        return json.load(f)


def run_greedy(engine, prompts: list[list[int]], max_tokens: int) -> dict[str, dict]:
    """All prompts in one batch; returns per request: ids and per-step TokenLogprobs."""
    results = {}
    for index, prompt_ids in enumerate(prompts):
        engine.add_request(f"g{index}", prompt_ids, SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                                                   logprobs=5, ignore_eos=True))
        results[f"g{index}"] = {"ids": [], "logprobs": []}
    while engine.has_unfinished():
        for out in engine.step():
            results[out.request_id]["ids"].extend(out.token_ids)
            results[out.request_id]["logprobs"].extend(out.logprobs)
        engine.scheduler.check_integrity()
    return results


def compare_with_golden(generation: dict, ours: dict) -> tuple[int, float]:
    """Walk llama.cpp's steps; returns (steps compared, mean |logprob error| of the chosen token)."""
    errors = []
    for step, (golden, mine) in enumerate(zip(generation["steps"], ours["logprobs"])):
        top = golden["top"]
        if len(top) > 1 and top[0][1] - top[1][1] < NEAR_TIE_NATS:
            break  # a near tie: either token is a faithful answer, stop comparing here
        assert mine.token_id == golden["id"], (
            f"prompt {generation['prompt']!r} step {step}: we chose {mine.token_id}, llama.cpp "
            f"{golden['id']} (gap {top[0][1] - top[1][1]:.3f} nats)")
        errors.append(abs(mine.logprob - golden["logprob"]))
        our_top = {token_id for token_id, _ in mine.top}
        assert golden["id"] in our_top
    return len(errors), float(np.mean(errors)) if errors else 0.0


def test_greedy_generations_match_llama_cpp(engine, goldens):
    generations = goldens["generations"]
    ours = run_greedy(engine, [g["prompt_ids"] for g in generations], max_tokens=48)
    total_compared = 0
    for index, generation in enumerate(generations):
        compared, mean_error = compare_with_golden(generation, ours[f"g{index}"])
        total_compared += compared
        assert mean_error < MAX_MEAN_LOGPROB_ERROR, (generation["prompt"], mean_error)
    assert total_compared >= len(generations) * 5  # the comparison really walked the steps
    assert engine.block_manager.num_free_blocks == engine.kv_cache.num_blocks


def test_logprob_top5_agrees_on_first_step(engine, goldens):
    """The whole top-5 distribution of the first step, not just the chosen token."""
    generations = goldens["generations"]
    ours = run_greedy(engine, [g["prompt_ids"] for g in generations], max_tokens=1)
    for index, generation in enumerate(generations):
        golden_top = dict((token_id, lp) for token_id, lp in generation["steps"][0]["top"])
        our_top = dict(ours[f"g{index}"]["logprobs"][0].top)
        for token_id, lp in golden_top.items():
            if token_id in our_top:
                assert abs(our_top[token_id] - lp) < 0.35, (generation["prompt"], token_id)
        assert len(set(golden_top) & set(our_top)) >= 4


def test_perplexity_matches_llama_cpp(engine, shared):
    with open(shared / "goldens" / "ppl.json") as f:
        reference = json.load(f)
    expected = reference["results"]["SmolLM2-135M-Instruct.Q4_1.gguf"]
    text = (shared / "goldens" / reference["text"]).read_text(encoding="utf-8")
    result = evaluate_perplexity(engine, text, reference["n_ctx"], show_progress=False)
    assert result.num_chunks == expected["chunks"]
    assert abs(result.ppl - expected["ppl"]) / expected["ppl"] < 0.02, result
