"""Greedy generation, logprobs and perplexity vs llama.cpp on the real SmolLM2.

Rules: ../shared/goldens/README.md, with llama.cpp's own configuration noise taken into account
as explained in tests/goldens/llama_cpp_references.py and docs/fidelity.md.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cupyserve.runtime.engine import LLMEngine
from cupyserve.runtime.engine_args import EngineArgs
from cupyserve.runtime.perplexity import evaluate_perplexity
from cupyserve.runtime.sampling_params import SamplingParams

from llama_cpp_references import (README_NEAR_TIE_NATS, compare_generation, gap,
                                   reproducibility_nats)
from testdata import backend_under_test

DATA = Path(__file__).parent / "data"
MAX_MEAN_LOGPROB_ERROR = 0.1
FAR_FROM_TIE_NATS = 0.5  # gaps this wide are far beyond llama.cpp's own noise: no excuse
# On the CUDA backend prompt rows go through fp16 tiles + cuBLAS, whose extra rounding the 8-bit
# activation rounding amplifies like any other last-bit difference: CUDA vs NumPy top-5 logprobs
# differ by up to ~0.5 nats on this model (tests/kernels/test_cuda_model.py, docs/fidelity.md).
# There a greedy step is a near tie below FAR_FROM_TIE_NATS; the teacher-forced test below
# still requires the same top-1 wherever llama.cpp's gap is at least that.


@pytest.fixture(scope="module")
def engine(smollm2_gguf):
    return LLMEngine(EngineArgs(model=str(smollm2_gguf), device=backend_under_test(), max_num_seqs=8,
                                kv_cache_memory=64 << 20))


@pytest.fixture(scope="module")
def references(shared) -> list[dict]:
    """llama.cpp's goldens (defaults: flash attention on) first, then our recordings of the same
    build with other settings (tests/oracle/record_llama_cpp_variant.py)."""
    goldens = json.loads((shared / "goldens" / "smollm2-135m-instruct-q4_1.json").read_text())
    variants = [json.loads(p.read_text()) for p in sorted(DATA.glob("smollm2-135m-instruct-q4_1.*.json"))]
    for variant in variants:
        assert [g["prompt_ids"] for g in variant["generations"]] == \
               [g["prompt_ids"] for g in goldens["generations"]]
    return [goldens, *variants]


def run_batch(engine, prompts: list[list[int]], max_tokens: int) -> list[list]:
    """All prompts in one batch; per prompt, the TokenLogprob of every generated step."""
    for index, prompt_ids in enumerate(prompts):
        engine.add_request(f"g{index}", prompt_ids, SamplingParams(
            max_tokens=max_tokens, temperature=0.0, logprobs=5, ignore_eos=True))
    steps: dict[str, list] = {f"g{i}": [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for out in engine.step():
            steps[out.request_id].extend(out.logprobs)
        engine.scheduler.check_integrity()
    return [steps[f"g{i}"] for i in range(len(prompts))]


def test_llama_cpp_reproducibility_is_measured(references):
    noise = reproducibility_nats(references)
    assert len(references) >= 2 and 0.0 < noise < 0.5, noise


def test_greedy_generations_match_llama_cpp(engine, references):
    goldens = references[0]["generations"]
    near_tie = max(README_NEAR_TIE_NATS, reproducibility_nats(references))
    if backend_under_test() == "cuda":
        near_tie = max(near_tie, FAR_FROM_TIE_NATS)
    ours = run_batch(engine, [g["prompt_ids"] for g in goldens], max_tokens=48)
    total = 0
    for index, generation in enumerate(goldens):
        refs = [r["generations"][index] for r in references]
        result = compare_generation(ours[index], refs, near_tie)
        print(f"{generation['prompt']!r}: {result}")
        assert not result.is_mismatch, (generation["prompt"], result)
        assert result.mean_logprob_error < MAX_MEAN_LOGPROB_ERROR, (generation["prompt"], result)
        total += result.num_compared
    # The walk really compared steps (it stops only at near ties, which are wider on CUDA).
    assert total >= (60 if backend_under_test() == "cpu" else 40), total
    assert engine.block_manager.num_free_blocks == engine.kv_cache.num_blocks


def test_teacher_forced_distribution_matches_llama_cpp(engine, references):
    """Feed llama.cpp's own tokens; over every golden step: our top-1 equals llama.cpp's wherever
    its gap is far beyond its own noise, and the top-5 logprobs stay within llama.cpp's own
    configuration-to-configuration spread."""
    goldens = references[0]["generations"]
    forced = [g["prompt_ids"] + g["ids"][:-1] for g in goldens]
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=5)
    for index, prompt in enumerate(forced):
        engine.add_request(f"tf{index}", prompt, params)
    prompt_logprobs: dict[str, list] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.prompt_logprobs is not None:
                prompt_logprobs[out.request_id] = out.prompt_logprobs
    errors, far_mismatches = [], []
    for index, generation in enumerate(goldens):
        entries = prompt_logprobs[f"tf{index}"][len(generation["prompt_ids"]):]
        for step_index, (step, entry) in enumerate(zip(generation["steps"], entries)):
            ours = dict(entry.top)
            if gap(step) >= FAR_FROM_TIE_NATS and entry.top[0][0] != step["id"]:
                far_mismatches.append((generation["prompt"], step_index))
            errors.extend(abs(ours[t] - lp) for t, lp in step["top"] if t in ours)
    assert not far_mismatches
    assert np.mean(errors) < 0.15, np.mean(errors)  # llama.cpp FA on vs off: 0.093


def test_perplexity_matches_llama_cpp(engine, shared):
    reference = json.loads((shared / "goldens" / "ppl.json").read_text())
    expected = reference["results"]["SmolLM2-135M-Instruct.Q4_1.gguf"]
    text = (shared / "goldens" / reference["text"]).read_text(encoding="utf-8")
    result = evaluate_perplexity(engine, text, reference["n_ctx"], show_progress=False)
    assert result.num_chunks == expected["chunks"]
    assert abs(result.ppl - expected["ppl"]) / expected["ppl"] < 0.02, result
