"""The real Gemma 3 270M Q4_K_M on the CPU backend vs llama.cpp (rules: goldens/README.md).

llama.cpp rounds activations to 8 bits inside its quantized matmuls (the reference does too), and
on the CPU also runs GELU through an fp16 table and attention through fp16 accumulators; the
rounding makes Gemma 3's logprobs chaotic. Measured on this file with teacher forcing: scaling
the embeddings by (1 +- 3e-7) or (1 +- 1e-6) moves our own top-5 logprobs by about 0.11 nats on
average (max 1.0) and flips our top-1 at steps where llama.cpp's top-2 gap is as large as 0.91
nats; our distance to llama.cpp is the same size (top-5 mean 0.12, chosen token 0.04). So where
README's 0.1-nat near tie assumes a quieter model, the greedy walk here also stops at a
disagreement whose llama.cpp gap is under NOISE_TIE_NATS, and fails on one above it.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from cupyserve.runtime.engine import LLMEngine
from cupyserve.runtime.engine_args import EngineArgs
from cupyserve.runtime.perplexity import evaluate_perplexity
from cupyserve.runtime.sampling_params import SamplingParams

from testdata import backend_under_test

NEAR_TIE_NATS = 0.1
NOISE_TIE_NATS = 1.0  # input perturbations of 3e-7..1e-6 flipped gaps up to 0.91
MAX_MEAN_LOGPROB_ERROR = 0.1
MAX_PROMPT_MEAN_LOGPROB_ERROR = 0.15  # one prompt's mean over few steps; README: "about 0.1"
GOLDEN_FILE = "gemma3-270m-q4_k_m.json"
PPL_KEY = "gemma-3-270m-q4_k_m.gguf"
# Teacher forcing (llama.cpp's tokens fed back): bounds measured on this model with margin.
MAX_MEAN_TOP5_ERROR = 0.2
MAX_CLEAR_DISAGREEMENT_GAP = NOISE_TIE_NATS  # a disagreement where llama.cpp was surer: a bug


@pytest.fixture(scope="module")
def engine(gemma3_gguf):
    return LLMEngine(EngineArgs(model=str(gemma3_gguf), device=backend_under_test(), max_num_seqs=8,
                                max_num_batched_tokens=512, kv_cache_memory=256 << 20,
                                enable_prefix_caching=False))


@pytest.fixture(scope="module")
def goldens(shared):
    with open(shared / "goldens" / GOLDEN_FILE) as f:
        return json.load(f)


def model_input(engine, prompt_ids: list[int]) -> list[int]:
    """What llama.cpp fed the model: BOS first, since gemma3's add_bos_token is true."""
    assert engine.tokenizer.add_bos
    return [engine.tokenizer.bos_id, *prompt_ids]


def run_requests(engine, prompts: list[list[int]], params: SamplingParams) -> dict[int, dict]:
    """All prompts in one batch; per prompt index: generated ids, per-step and prompt logprobs."""
    results = {i: {"ids": [], "logprobs": [], "prompt_logprobs": None} for i in range(len(prompts))}
    for index, ids in enumerate(prompts):
        engine.add_request(f"r{index}", ids, params)
    while engine.has_unfinished():
        for out in engine.step():
            result = results[int(out.request_id[1:])]
            result["ids"].extend(out.token_ids)
            result["logprobs"].extend(out.logprobs)
            if out.prompt_logprobs is not None:
                result["prompt_logprobs"] = out.prompt_logprobs
    return results


def greedy_agreement(generation: dict, ours: dict) -> tuple[list[float], str]:
    """Walk llama.cpp's steps under the README rules, widened by NOISE_TIE_NATS: (|chosen logprob
    errors| of the agreeing steps, why the walk ended; "FAIL ..." for a real disagreement)."""
    errors = []
    for step, (golden, mine) in enumerate(zip(generation["steps"], ours["logprobs"])):
        top = golden["top"]
        gap = top[0][1] - top[1][1]
        if gap < NEAR_TIE_NATS:
            return errors, f"near tie at step {step} (gap {gap:.3f})"
        if mine.token_id != golden["id"]:
            verdict = "noise-level tie" if gap < NOISE_TIE_NATS else "FAIL"
            return errors, (f"{verdict} at step {step}: we chose {mine.token_id}, llama.cpp "
                            f"{golden['id']} (gap {gap:.3f} nats)")
        errors.append(abs(mine.logprob - golden["logprob"]))
    return errors, "all steps agree"


def test_health_reports_family(engine):
    health = engine.health()
    assert health["family"] == "gemma3"
    assert health["tokenizer_kind"] == "gguf-spm"
    assert health["vocab_size"] == 262144
    assert set(health["quant_kind"].split("+")) >= {"Q4_K", "Q6_K", "Q5_0", "Q8_0"}


def test_chat_template_reproduces_the_golden_chat_prompt(engine, goldens):
    """The GGUF has no template; the family's Gemma template renders the recorded chat prompt."""
    from cupyserve.server.prompt_tokens import chat_prompt_ids
    from cupyserve.runtime.chat_template import render_chat

    generation = next(g for g in goldens["generations"] if g["prompt"].startswith("<start_of_turn>"))
    text = render_chat(engine.tokenizer.chat_template,
                       [{"role": "user", "content": "Write a haiku about the ocean."}],
                       bos_token=engine.tokenizer.bos_token)
    assert list(chat_prompt_ids(engine.tokenizer, text)) == model_input(engine, generation["prompt_ids"])


def test_perplexity_matches_llama_cpp(engine, shared):
    with open(shared / "goldens" / "ppl.json") as f:
        reference = json.load(f)
    expected = reference["results"][PPL_KEY]
    text = (shared / "goldens" / reference["text"]).read_text(encoding="utf-8")
    result = evaluate_perplexity(engine, text, reference["n_ctx"], show_progress=False)
    assert result.num_chunks == expected["chunks"]
    assert abs(result.ppl - expected["ppl"]) / expected["ppl"] < 0.02, result


def test_greedy_generations_match_llama_cpp(engine, goldens):
    generations = goldens["generations"]
    ours = run_requests(engine, [model_input(engine, g["prompt_ids"]) for g in generations],
                        SamplingParams(max_tokens=48, temperature=0.0, logprobs=5, ignore_eos=True))
    failures, all_errors = [], []
    for index, generation in enumerate(generations):
        errors, ending = greedy_agreement(generation, ours[index])
        all_errors += errors
        if ending.startswith("FAIL"):
            failures.append(f"{generation['prompt']!r}: {ending}")
        if errors and np.mean(errors) >= MAX_PROMPT_MEAN_LOGPROB_ERROR:
            failures.append(f"{generation['prompt']!r}: mean |logprob error| {np.mean(errors):.3f}")
    assert not failures, failures
    assert len(all_errors) >= len(generations) * 3  # the comparison really walked the steps
    assert np.mean(all_errors) < MAX_MEAN_LOGPROB_ERROR, np.mean(all_errors)
    assert engine.block_manager.num_free_blocks == engine.kv_cache.num_blocks


def test_teacher_forced_logprobs_track_llama_cpp(engine, goldens):
    """Feed llama.cpp's own continuation and score every step against its top-5."""
    generations = goldens["generations"]
    prompts = [model_input(engine, g["prompt_ids"] + g["ids"]) for g in generations]
    ours = run_requests(engine, prompts, SamplingParams(max_tokens=1, temperature=0.0,
                                                        prompt_logprobs=20))
    top5_errors, chosen_errors, clear_disagreements = [], [], []
    for index, generation in enumerate(generations):
        # prompt_logprobs[j] scores token j; llama.cpp's step s is token len(prompt) + 1 + s.
        scored = ours[index]["prompt_logprobs"][len(generation["prompt_ids"]) + 1:]
        assert len(scored) == len(generation["steps"])
        for step, (golden, mine) in enumerate(zip(generation["steps"], scored)):
            our_top = dict(mine.top)
            top5_errors += [abs(our_top[t] - lp) for t, lp in golden["top"] if t in our_top]
            chosen_errors.append(abs(mine.logprob - golden["logprob"]))
            gap = golden["top"][0][1] - golden["top"][1][1]
            if mine.top[0][0] != golden["top"][0][0] and gap >= MAX_CLEAR_DISAGREEMENT_GAP:
                clear_disagreements.append((generation["prompt"], step, round(gap, 3)))
    assert np.mean(chosen_errors) < MAX_MEAN_LOGPROB_ERROR, np.mean(chosen_errors)
    assert np.mean(top5_errors) < MAX_MEAN_TOP5_ERROR, np.mean(top5_errors)
    assert not clear_disagreements, clear_disagreements
