"""Real device-memory exhaustion on the GPU: the step that cannot allocate fails only its requests
with `vram_oom`, the engine frees what it held, and the next request succeeds."""
from __future__ import annotations

import pytest

from test_cuda_model import _model_path

pytestmark = pytest.mark.gpu


def _run(engine, request_id: str, prompt: list[int], max_tokens: int = 8):
    from cupyserve.runtime.sampling_params import SamplingParams

    engine.add_request(request_id, prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                                          ignore_eos=True))
    outputs = []
    while engine.has_unfinished():
        outputs.extend(engine.step())
        engine.scheduler.check_integrity()
    return [o for o in outputs if o.request_id == request_id]


def test_device_oom_fails_only_that_step_and_the_server_recovers(cuda_ops):
    import cupy

    from cupyserve.runtime.engine import LLMEngine
    from cupyserve.runtime.engine_args import EngineArgs

    engine = LLMEngine(EngineArgs(model=str(_model_path()), device="cuda", kv_cache_memory=64 << 20,
                                  pull_if_missing=False, max_num_seqs=4))
    prompt = engine.tokenizer.encode("The capital of France is")
    before = _run(engine, "before", prompt)
    assert before[-1].finish_reason == "length" and before[-1].error is None
    expected = [t for o in before for t in o.token_ids]

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    hog, chunk = [], 1 << 30
    while chunk >= 1 << 20:  # take every byte the device will give, in shrinking chunks
        try:
            hog.append(cupy.empty(chunk, dtype=cupy.uint8))
        except cupy.cuda.memory.OutOfMemoryError:
            chunk //= 2
    long_prompt = (prompt * 200)[:900]  # a prefill whose activations need fresh device memory
    failed = _run(engine, "during", long_prompt)
    assert failed[-1].finish_reason == "error"
    assert failed[-1].error is not None and failed[-1].error.code == "vram_oom"
    assert engine.block_manager.num_free_blocks == engine.kv_cache.num_blocks

    del hog
    pool.free_all_blocks()
    after = _run(engine, "after", prompt)
    assert after[-1].error is None
    assert [t for o in after for t in o.token_ids] == expected
