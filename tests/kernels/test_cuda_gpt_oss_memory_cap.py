"""gpt-oss-20b (MXFP4 experts, 12.1 GB) under --gpu-memory-limit on the GPU: it fits a 24 GiB
cap with weights resident at about their file size, serves requests, a request that runs out of
device memory under the cap fails alone, and a cap below the weights is a clear startup error.

The model: $CUPYSERVE_GPT_OSS_20B, a file written by
`python benchmarks/make_gpt_oss_gguf.py gpt-oss-20b PATH` (random weights of the real layout);
skipped when unset. One engine for the whole file keeps the runtime short.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
CAP_BYTES = 24 << 30
TOO_SMALL_CAP_BYTES = 8 << 30
MODEL_ENV = "CUPYSERVE_GPT_OSS_20B"


def _model_path() -> Path:
    path = os.environ.get(MODEL_ENV, "")
    if not path:
        pytest.skip(f"set {MODEL_ENV} to a gpt-oss-20b GGUF (benchmarks/make_gpt_oss_gguf.py)")
    if not Path(path).is_file():
        pytest.fail(f"{MODEL_ENV}={path} is not a file")
    return Path(path)


def _args(path: Path, cap_bytes: int):
    from cupyserve.runtime.engine_args import EngineArgs

    return EngineArgs(model=str(path), device="cuda", pull_if_missing=False, gpu_memory_limit=cap_bytes,
                      max_model_len=4096, max_num_seqs=16)


def _run(engine, prompts: dict[str, list[int]], max_tokens: int = 8) -> dict[str, list]:
    from cupyserve.runtime.sampling_params import SamplingParams

    for request_id, prompt in prompts.items():
        engine.add_request(request_id, prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                                              ignore_eos=True))
    outputs: dict[str, list] = {request_id: [] for request_id in prompts}
    while engine.has_unfinished():
        for output in engine.step():
            outputs[output.request_id].append(output)
        engine.scheduler.check_integrity()
    return outputs


@pytest.fixture
def uncapped_pool_after(cuda_ops):
    """The cap bounds CuPy's pool for the process; lift it after the test so later tests run."""
    import cupy

    yield
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    pool.set_limit(size=0)


def test_cap_below_the_weights_fails_at_startup_naming_both_sizes(uncapped_pool_after):
    from cupyserve.runtime.device_memory import InsufficientDeviceMemory
    from cupyserve.runtime.engine import LLMEngine

    path = _model_path()
    with pytest.raises(InsufficientDeviceMemory) as failure:
        LLMEngine(_args(path, TOO_SMALL_CAP_BYTES))
    message = str(failure.value)
    required = int(re.search(r"(\d+) bytes required", message).group(1))
    available = int(re.search(r"but (\d+) bytes", message).group(1))
    assert available <= TOO_SMALL_CAP_BYTES < required
    assert required > 0.9 * path.stat().st_size  # the weights themselves, not just scratch


def test_20b_fits_a_24_gib_cap_serves_requests_and_survives_an_oom(cuda_ops, uncapped_pool_after):
    import cupy

    from cupyserve.runtime.engine import LLMEngine

    path = _model_path()
    engine = LLMEngine(_args(path, CAP_BYTES))
    try:
        health = engine.health()
        assert health["family"] == "gpt-oss" and health["resident"] and health["healthy"]
        assert health["vram_bytes_used"] <= CAP_BYTES
        graph_bytes = engine.decode_graphs.num_bytes() if engine.decode_graphs is not None else 0
        resident_weights = health["vram_bytes_used"] - engine.kv_cache.num_bytes - graph_bytes
        file_size = path.stat().st_size
        assert 0.9 * file_size <= resident_weights <= 1.1 * file_size, (resident_weights, file_size)

        # (a) a few requests at once, each generating its tokens
        words = ["The capital of France is", "Hello world", "def main():", "1 2 3 4 5"]
        prompts = {f"r{i}": engine.tokenizer.encode(text) for i, text in enumerate(words)}
        results = _run(engine, prompts)
        for request_id, outputs in results.items():
            assert outputs[-1].finish_reason == "length" and outputs[-1].error is None, request_id
            assert len([t for o in outputs for t in o.token_ids]) == 8
        expected = [t for o in _run(engine, {"before": prompts["r0"]})["before"] for t in o.token_ids]

        # (c) a real OOM under the cap: take every byte the capped pool still gives, then a
        # prefill that needs fresh activations fails with vram_oom and frees its KV blocks.
        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()
        hog, chunk = [], 1 << 30
        while chunk >= 1 << 20:
            try:
                hog.append(cupy.empty(chunk, dtype=cupy.uint8))
            except cupy.cuda.memory.OutOfMemoryError:
                chunk //= 2
        assert engine.vram_bytes_used() <= CAP_BYTES
        long_prompt = (prompts["r0"] * 400)[:1000]
        failed = _run(engine, {"during": long_prompt})["during"]
        assert failed[-1].finish_reason == "error"
        assert failed[-1].error is not None and failed[-1].error.code == "vram_oom"
        assert engine.block_manager.num_free_blocks == engine.kv_cache.num_blocks

        del hog
        pool.free_all_blocks()
        after = _run(engine, {"after": prompts["r0"]})["after"]
        assert after[-1].error is None
        assert [t for o in after for t in o.token_ids] == expected
        assert engine.health()["healthy"]
    finally:
        engine.close()
        del engine
