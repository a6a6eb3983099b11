"""Tensor parallel on the NumPy backend: TP=2 (two processes, pipe collectives) against TP=1 on
the real SmolLM2 and on synthetic qwen2/phi3 files, and a rank that dies.

Why the tolerances differ (docs/tensor_parallel.md): TP=2 computes the same products but adds
the two halves of every attn_output/ffn_down matmul after the fact, which changes the float32
summation order (relative differences ~1e-7). Every weight of SmolLM2's Q4_1 file meets its
input through ggml's emulated 8-bit activation rounding, and with this model's massive
activations such a difference flips some roundings downstream: docs/fidelity.md measured that a
1e-6 relative change of the norm weights moves our top-5 logprobs by 0.088 nats on average (max
0.56), and llama.cpp's own flash-attention on/off by 0.093. TP=2 is the same kind of change, so
SmolLM2 is held to the project's bars for two correct implementations of one model
(docs/fidelity.md: chosen-token error mean < 0.1, top-5 mean < 0.15), greedy tokens equal until
the first step whose top-2 gap is below llama.cpp's own reproducibility (0.25 nats), and no
error above 1 nat (a wrong shard is off by several). The synthetic f16 file has
no 8-bit rounding, only fp16 rounding of activations (an ulp of 5e-4 relative): there TP=2
must stay within llama.cpp's own flash-attention on/off top-5 spread on that very fixture
(0.0074 nats mean, docs/families.md), ten times tighter than SmolLM2's envelope.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cupyserve.runtime.engine import LLMEngine
from cupyserve.runtime.engine_args import EngineArgs
from cupyserve.runtime.parallel.block_slicing import ShardingError
from cupyserve.runtime.parallel.worker_group import TensorParallelFailure
from cupyserve.runtime.sampling_params import SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oracle"))
from make_synthetic_family_gguf import VOCAB_DIR, write  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):"]
MAX_TOKENS = 8
NEAR_TIE_NATS = 0.25  # llama.cpp's own top-2 gap reproducibility on SmolLM2 (docs/fidelity.md)
MAX_MEAN_CHOSEN_ERROR = 0.1  # README's bar, docs/fidelity.md
MAX_MEAN_TOP5_ERROR = 0.15  # docs/fidelity.md's teacher-forced bar (llama.cpp FA on/off: 0.093)
MAX_LOGPROB_ERROR = 1.0
F16_MEAN_LOGPROB_ERROR = 0.0074  # llama.cpp FA on vs off, qwen2 f16 top-5 (docs/families.md)
F16_MAX_LOGPROB_ERROR = 0.05
MIN_STEPS_COMPARED = 6  # of the 2 x 8 greedy steps


@pytest.fixture(autouse=True)
def one_blas_thread_per_worker(monkeypatch):
    """Workers are spawned with this environment: one BLAS thread each on the 2-core CI box."""
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")


def make_engine(path: Path, tensor_parallel_size: int, device: str = "cpu") -> LLMEngine:
    return LLMEngine(EngineArgs(model=str(path), device=device, max_model_len=128, max_num_seqs=4,
                                kv_cache_memory=8 << 20, enable_prefix_caching=False,
                                tensor_parallel_size=tensor_parallel_size))


def generate(engine: LLMEngine, prompts: list[str]) -> dict[str, list]:
    """Greedy tokens with top-5 logprobs, all prompts batched together."""
    for index, prompt in enumerate(prompts):
        ids = engine.tokenizer.encode(prompt, add_special_tokens=True, parse_special=False)
        engine.add_request(str(index), ids, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0,
                                                           logprobs=5, ignore_eos=True))
    steps: dict[str, list] = {str(i): [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for out in engine.step():
            assert out.error is None, out.error
            steps[out.request_id].extend(out.logprobs)
    return steps


def run(path: Path, tensor_parallel_size: int, device: str = "cpu") -> dict[str, list]:
    engine = make_engine(path, tensor_parallel_size, device)
    try:
        return generate(engine, PROMPTS)
    finally:
        engine.close()


def compare(single: dict[str, list], parallel: dict[str, list],
            chosen_errors: list[float] | None = None) -> tuple[int, list[float]]:
    """Walk each request's steps while TP=1's top-2 gap is clear of a near tie (the near-tie step
    itself may choose either token: found on two GPUs, a 0.054-nat gap): the chosen tokens must
    be equal; returns (steps compared, |logprob error| of every top-5 entry there)
    and appends the chosen tokens' errors to `chosen_errors`."""
    num_compared, errors = 0, []
    for request_id, steps in single.items():
        for ref, got in zip(steps, parallel[request_id]):
            if ref.top[0][1] - ref.top[1][1] < NEAR_TIE_NATS:
                break  # from a near tie on, the two paths may rightly choose differently
            assert got.token_id == ref.token_id, (request_id, num_compared)
            if chosen_errors is not None:
                chosen_errors.append(abs(got.logprob - ref.logprob))
            ref_top, got_top = dict(ref.top), dict(got.top)
            errors.extend(abs(ref_top[t] - got_top[t]) for t in ref_top if t in got_top)
            num_compared += 1
    return num_compared, errors


def test_smollm2_tp2_matches_tp1(smollm2_gguf) -> None:
    chosen: list[float] = []
    num_compared, errors = compare(run(smollm2_gguf, 1), run(smollm2_gguf, 2), chosen)
    assert num_compared >= MIN_STEPS_COMPARED
    print(f"SmolLM2 TP=2 vs TP=1: {num_compared} steps, chosen-token error mean "
          f"{np.mean(chosen):.4f}, top-5 error mean {np.mean(errors):.4f} max {max(errors):.4f}")
    assert np.mean(chosen) < MAX_MEAN_CHOSEN_ERROR, np.mean(chosen)
    assert np.mean(errors) < MAX_MEAN_TOP5_ERROR and max(errors) < MAX_LOGPROB_ERROR, \
        (np.mean(errors), max(errors))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    if not VOCAB_DIR.is_dir():
        pytest.skip(f"{VOCAB_DIR} (llama.cpp's vocab fixtures) not found; set CUPYSERVE_VOCAB_DIR")
    folder = tmp_path_factory.mktemp("tp-synthetic")

    def make(family: str, quant: str) -> Path:
        path = folder / f"{family}-{quant}.gguf"
        if not path.exists():
            write(family, quant, path)
        return path

    return make


def test_synthetic_qwen2_f16_tp2_matches_tp1_tightly(synthetic) -> None:
    """Q/K/V biases, GQA 4/2 (one KV head per rank), a 151936-row tied vocab split in two."""
    path = synthetic("qwen2", "f16")
    num_compared, errors = compare(run(path, 1), run(path, 2))
    assert num_compared >= MIN_STEPS_COMPARED
    print(f"qwen2 f16 TP=2 vs TP=1: {num_compared} steps, top-5 logprob error mean "
          f"{np.mean(errors):.5f} max {max(errors):.5f}")
    assert np.mean(errors) < F16_MEAN_LOGPROB_ERROR and max(errors) < F16_MAX_LOGPROB_ERROR, \
        (np.mean(errors), max(errors))


def test_synthetic_phi3_q4_0_tp2_matches_tp1(synthetic) -> None:
    """Fused attn_qkv and gate+up tensors, sliced per part; Q4_0 columns split on 32-blocks."""
    path = synthetic("phi3", "q4_0")
    num_compared, errors = compare(run(path, 1), run(path, 2))
    assert num_compared >= MIN_STEPS_COMPARED
    print(f"phi3 q4_0 TP=2 vs TP=1: {num_compared} steps, top-5 logprob error mean "
          f"{np.mean(errors):.4f} max {max(errors):.4f}")
    assert np.mean(errors) < MAX_MEAN_TOP5_ERROR and max(errors) < MAX_LOGPROB_ERROR, \
        (np.mean(errors), max(errors))


def test_unsplittable_file_fails_at_startup(synthetic) -> None:
    """q4_k_m: attn_output is Q4_K (256-column blocks) and 2 heads x 64 = 128 columns per rank."""
    with pytest.raises(ShardingError, match="256-column quantization block"):
        make_engine(synthetic("qwen2", "q4_k_m"), 2)


def test_dead_rank_fails_requests_and_health(synthetic) -> None:
    engine = make_engine(synthetic("phi3", "q4_0"), 2)
    try:
        assert engine.health()["healthy"] and engine.health()["tensor_parallel_size"] == 2
        (worker,) = engine.model.group.processes
        os.kill(worker.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while engine.health()["fatal_error"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        health = engine.health()
        assert not health["healthy"]
        assert f"rank 1 (pid {worker.pid}) exited with code -9" in health["fatal_error"]
        ids = engine.tokenizer.encode("Hello", add_special_tokens=True, parse_special=False)
        engine.add_request("r", ids, SamplingParams(max_tokens=4, temperature=0.0))
        with pytest.raises(TensorParallelFailure, match="rank 1"):
            engine.step()
    finally:
        engine.close()


def test_hung_rank_times_out_the_step(synthetic) -> None:
    """A rank that stops answering (SIGSTOP: alive, but its collectives never come) is what a hung
    NCCL collective looks like; the step fails after the timeout instead of waiting forever."""
    path = synthetic("phi3", "q4_0")
    engine = LLMEngine(EngineArgs(model=str(path), device="cpu", max_model_len=128, max_num_seqs=4,
                                  kv_cache_memory=8 << 20, tensor_parallel_size=2,
                                  tensor_parallel_timeout_s=2.0))
    (worker,) = engine.model.group.processes
    try:
        ids = engine.tokenizer.encode("Hello", add_special_tokens=True, parse_special=False)
        engine.add_request("r", ids, SamplingParams(max_tokens=4, temperature=0.0))
        os.kill(worker.pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(TensorParallelFailure, match="did not finish in 2 s"):
            while engine.has_unfinished():
                engine.step()
        assert time.monotonic() - start < 30
        health = engine.health()
        assert not health["healthy"] and "hung" in health["fatal_error"]
    finally:
        try:
            os.kill(worker.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        engine.close()
