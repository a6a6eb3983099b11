"""Batch invariance of the real engine (SmolLM2 on the NumPy backend, no HTTP).

A request's tokens must not depend on what else runs: with temperature 0, and with a fixed seed
at temperature 0.8, each of 32 requests of different lengths yields the same tokens alone as
among the 31 others. The scheduler's and block manager's invariants are checked after every step.
The concurrent round runs on the same engine as the solo rounds, so it also meets prefix-cache
hits (each prompt's full blocks are cached by its solo run) and chunked prefills (the 256-token
step budget splits the 32 prompts): neither may change a token.
"""
from __future__ import annotations

import ctypes
import glob
import os

import pytest

from cupyserve.runtime.engine import LLMEngine
from cupyserve.runtime.engine_args import EngineArgs
from cupyserve.runtime.sampling_params import SamplingParams

pytestmark = pytest.mark.slow

NUM_REQUESTS = 32
MAX_TOKENS = 8
TEXT = ("In the heart of the old city there was a small bakery whose owner rose every morning "
        "before dawn to light the ovens, knead the dough and greet the first customers, who came "
        "for warm bread, sweet rolls and the latest news of the neighbourhood. ") * 3


def limit_blas_threads(num_threads: int) -> None:
    """One OpenBLAS thread: on the shared 2-core CI box a busy-waiting second BLAS thread makes
    every step ~15x slower. (The env var would be read too late: NumPy is already loaded.)"""
    import numpy

    libs = os.path.join(os.path.dirname(numpy.__file__), os.pardir, "numpy.libs", "*openblas*")
    for path in glob.glob(libs):
        lib = ctypes.CDLL(path)
        for symbol in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                       "openblas_set_num_threads"):
            if hasattr(lib, symbol):
                getattr(lib, symbol)(ctypes.c_int(num_threads))
                return


@pytest.fixture(scope="module")
def engine(smollm2_gguf) -> LLMEngine:
    limit_blas_threads(1)
    return LLMEngine(EngineArgs(model=str(smollm2_gguf), device="cpu", max_model_len=1024,
                                kv_cache_memory=64 << 20, max_num_seqs=NUM_REQUESTS,
                                max_num_batched_tokens=256))


def request_params(index: int) -> SamplingParams:
    """Every 4th request samples at temperature 0.8 with its own seed; the rest are greedy."""
    if index % 4 == 3:
        return SamplingParams(max_tokens=MAX_TOKENS, temperature=0.8, seed=4242 + index, ignore_eos=True)
    return SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)


def prompts(engine: LLMEngine) -> list[list[int]]:
    """32 prompts of 4..35 tokens, each starting at a different offset (no shared prefixes)."""
    ids = engine.tokenizer.encode(TEXT, add_special_tokens=False, parse_special=False)
    return [ids[index:index + 4 + index] for index in range(NUM_REQUESTS)]


def run_to_completion(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list[int]]:
    """Add every request, step until all finish; check integrity after each step."""
    for request_id, (prompt_ids, params) in requests.items():
        engine.add_request(request_id, prompt_ids, params)
    tokens: dict[str, list[int]] = {request_id: [] for request_id in requests}
    finish: dict[str, str] = {}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id].extend(out.token_ids)
            if out.is_finished:
                finish[out.request_id] = out.finish_reason
        engine.scheduler.check_integrity()
    assert finish == {request_id: "length" for request_id in requests}
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    return tokens


def test_tokens_are_identical_alone_and_among_31_others(engine):
    all_prompts = prompts(engine)
    assert len({len(p) for p in all_prompts}) == NUM_REQUESTS
    requests = {f"req-{i}": (all_prompts[i], request_params(i)) for i in range(NUM_REQUESTS)}
    solo: dict[str, list[int]] = {}
    for request_id, request in requests.items():
        solo.update(run_to_completion(engine, {f"{request_id}-solo": request}))
    together = run_to_completion(engine, {f"{rid}-together": r for rid, r in requests.items()})
    mismatches = [rid for rid in requests if solo[f"{rid}-solo"] != together[f"{rid}-together"]]
    assert not mismatches, {rid: (solo[f"{rid}-solo"], together[f"{rid}-together"]) for rid in mismatches}
    seeded = [rid for i, rid in enumerate(requests) if not request_params(i).is_greedy]
    assert len(seeded) == 8 and all(len(set(solo[f"{rid}-solo"])) > 1 for rid in seeded)


def test_seeded_sampling_depends_on_the_seed(engine):
    """Guards the test above against a sampler that ignores the RNG: another seed, other tokens."""
    prompt = prompts(engine)[5]
    first = run_to_completion(engine, {"seed-a": (prompt, SamplingParams(
        max_tokens=MAX_TOKENS, temperature=0.8, seed=1, ignore_eos=True))})["seed-a"]
    again = run_to_completion(engine, {"seed-a2": (prompt, SamplingParams(
        max_tokens=MAX_TOKENS, temperature=0.8, seed=1, ignore_eos=True))})["seed-a2"]
    others = [run_to_completion(engine, {f"seed-{s}": (prompt, SamplingParams(
        max_tokens=MAX_TOKENS, temperature=0.8, seed=s, ignore_eos=True))})[f"seed-{s}"] for s in (2, 3)]
    assert first == again
    assert any(other != first for other in others)
