"""Injected device OOM (CUPYSERVE_FAULT_OOM_AT_ALLOC=N): only the request in the failing step
fails, with `code: "vram_oom"`; its blocks are freed and the next request succeeds.

Two servers: N=1 fails the very first step (a non-streaming request: HTTP 500); N=15 fails a
later step of a streaming request (after its first tokens: an in-band error chunk, then
[DONE]). The step-allocation count restarts after startup, so N does not depend on the pool.
The first server also runs with --log-prompts, to check prompts do reach the log then.
"""
from __future__ import annotations

import httpx
import orjson
import pytest

from runtime_support import assert_healthy_and_idle, log_events, metric_value, start_runtime_server
from server_process import stop_server

pytestmark = pytest.mark.e2e

OOM_RECOVERIES = "cupyserve:oom_recoveries_total"


@pytest.fixture(scope="module", params=[("json", "1"), ("stream", "15")], ids=["first-step", "later-step"])
def oom_server(request, smollm2_gguf, tmp_path_factory):
    mode, fail_at = request.param
    extra_args = ("--log-prompts",) if mode == "json" else ()
    running = start_runtime_server(smollm2_gguf, tmp_path_factory.mktemp(f"oom-{mode}"), extra_args,
                                   {"CUPYSERVE_FAULT_OOM_AT_ALLOC": fail_at})
    try:
        yield mode, running
    finally:
        code = stop_server(running)
    assert code == 0, running.log_tail()


def test_injected_oom_fails_only_that_request_and_the_server_keeps_serving(oom_server):
    mode, server = oom_server
    body = {"prompt": "The capital of France is", "max_tokens": 16, "ignore_eos": True, "temperature": 0}
    with httpx.Client(base_url=server.url, timeout=300.0) as http:
        assert metric_value(http, OOM_RECOVERIES) == 0
        if mode == "json":
            response = http.post("/v1/completions", json=body)
            assert response.status_code == 500, response.text
            error = response.json()["error"]
        else:
            with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
                assert response.status_code == 200
                lines = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
            assert lines[-1] == "[DONE]"
            chunks = [orjson.loads(line) for line in lines[:-1]]
            assert any(c.get("choices") and c["choices"][0]["text"] for c in chunks[:-1]), "no token before the OOM"
            error = chunks[-1]["error"]
        assert error["code"] == "vram_oom" and "out of device memory" in error["message"]
        assert metric_value(http, OOM_RECOVERIES) == 1
        assert metric_value(http, "cupyserve:request_success_total", finished_reason="error") == 1
        assert_healthy_and_idle(server, http)

        retry = http.post("/v1/completions", json=body)
        assert retry.status_code == 200, retry.text
        assert retry.json()["choices"][0]["finish_reason"] == "length"
        assert metric_value(http, OOM_RECOVERIES) == 1
        assert_healthy_and_idle(server, http)

    oom_errors = [e for e in log_events(server) if e["event"] == "error" and e.get("kind") == "vram_oom"]
    assert len(oom_errors) == 1
    starts = [e for e in log_events(server) if e["event"] == "request_start"]
    assert starts and all(("prompt_ids" in e) == (mode == "json") for e in starts)  # --log-prompts
