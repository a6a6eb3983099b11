"""Integrity mode (CUPYSERVE_CHECK_INTEGRITY=1) on the real engine: a broken invariant after a
step is logged as an `error` event and turns /health into 503 "unhealthy"."""
from __future__ import annotations

import io
import sys

import orjson
import pytest
from starlette.testclient import TestClient

from cupyserve.runtime import log
from cupyserve.runtime.async_engine import AsyncEngine
from cupyserve.runtime.engine import CHECK_INTEGRITY_ENV, LLMEngine
from cupyserve.runtime.engine_args import EngineArgs
from cupyserve.runtime.sampling_params import SamplingParams
from cupyserve.server.app import create_app


@pytest.fixture(scope="module")
def engine(smollm2_gguf) -> LLMEngine:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CHECK_INTEGRITY_ENV, "1")
        return LLMEngine(EngineArgs(model=str(smollm2_gguf), device="cpu", max_model_len=256,
                                    kv_cache_memory=4 << 20))


def test_a_broken_invariant_is_logged_and_makes_health_unhealthy(engine):
    client = TestClient(create_app(AsyncEngine(engine)))  # /health only reads the engine
    assert engine.is_checking_integrity
    assert client.get("/health").json()["status"] == "ok"
    engine.add_request("ok-1", [1, 2, 3, 4, 5], SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    assert engine.integrity_error is None and client.get("/health").status_code == 200

    engine.add_request("broken", [1, 2, 3, 4, 5], SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))
    engine.step()
    seq = engine.scheduler.running[0]
    free_block = next(b for b in range(engine.block_manager.num_blocks)
                      if engine.block_manager.refcount(b) == 0 and b not in seq.block_table)
    seq.block_table.append(free_block)  # a block the pool thinks is free: refcounts now disagree
    stream = io.StringIO()
    log.configure(stream=stream)
    try:
        engine.step()
    finally:
        log.configure(stream=sys.stderr)
    seq.block_table.remove(free_block)

    errors = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    errors = [e for e in errors if e["event"] == "error" and e["kind"] == "integrity"]
    assert len(errors) == 1 and "refcount" in errors[0]["message"]
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy" and body["healthy"] is False
    assert "refcount" in body["integrity_error"]
