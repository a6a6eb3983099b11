"""Helpers shared by the runtime e2e tests (tests/e2e/test_e2e_runtime_*.py).

Every runtime test server runs in integrity mode (`CUPYSERVE_CHECK_INTEGRITY=1`: the scheduler
and block-manager invariants are checked after every engine step; a violation turns /health
unhealthy), so each test ends by asserting the server is still healthy with every KV block free.
"""
from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server_process import RunningServer, start_server, stop_server

# OpenBLAS busy-waits its worker threads; on the shared 2-core CI machine a second BLAS thread
# fights the event loop, the test clients and other jobs for the cores, and a decode step gets
# ~15x slower. One BLAS thread leaves a core to the event loop (what the latency test measures).
RUNTIME_ENV = {"CUPYSERVE_CHECK_INTEGRITY": "1", "OPENBLAS_NUM_THREADS": "1"}


def start_runtime_server(model: Path, workdir: Path, extra_args: tuple[str, ...] = (),
                         extra_env: dict[str, str] | None = None) -> RunningServer:
    return start_server(model, workdir, extra_args, {**RUNTIME_ENV, **(extra_env or {})})


@pytest.fixture(scope="session")
def runtime_server(smollm2_gguf, tmp_path_factory) -> RunningServer:
    """One integrity-mode server shared by the runtime test modules that import this fixture
    (each test leaves it idle); it must exit 0 on SIGTERM at the end of the session."""
    running = start_runtime_server(smollm2_gguf, tmp_path_factory.mktemp("runtime"))
    try:
        yield running
    finally:
        code = stop_server(running)
    assert code == 0, running.log_tail()


@pytest.fixture()
def runtime_http(runtime_server):
    with httpx.Client(base_url=runtime_server.url, timeout=300.0) as client:
        yield client


def log_events(server: RunningServer) -> list[dict]:
    """Every JSON line the server wrote so far (stdout and stderr share the log file)."""
    events = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            events.append(orjson.loads(line))
    return events


def integrity_errors(server: RunningServer) -> list[dict]:
    return [e for e in log_events(server) if e["event"] == "error" and e.get("kind") == "integrity"]


def wait_all_blocks_free(http: httpx.Client, timeout_s: float = 30.0) -> dict:
    """Poll /health until every KV block is free (aborted sequences are freed at the next step);
    returns the last /health body."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = http.get("/health").json()
        if body["kv_blocks_free"] == body["kv_blocks_total"] or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def assert_healthy_and_idle(server: RunningServer, http: httpx.Client) -> None:
    """No integrity violation so far, nothing running, and every KV block back in the pool."""
    body = wait_all_blocks_free(http)
    assert body["kv_blocks_free"] == body["kv_blocks_total"], body
    assert body["integrity_checking"], "the server ignored CUPYSERVE_CHECK_INTEGRITY"
    assert body["status"] == "ok" and body["healthy"] and body["integrity_error"] is None, body
    assert integrity_errors(server) == []


def metric_samples(http: httpx.Client) -> dict[str, dict]:
    """/metrics parsed with Prometheus' own text parser: family name -> {"type", "samples"}."""
    families = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        families[family.name] = {"type": family.type, "samples": family.samples}
    return families


def metric_value(http: httpx.Client, sample_name: str, **labels: str) -> float:
    """The value of one sample (e.g. "cupyserve:num_preemptions_total"); 0.0 when absent."""
    for family in metric_samples(http).values():
        for sample in family["samples"]:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def sse_payloads(response: httpx.Response) -> list:
    """The decoded `data:` payloads of an SSE response, "[DONE]" kept as the string."""
    payloads = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            payloads.append(data if data == "[DONE]" else orjson.loads(data))
    return payloads


def completion_text(http: httpx.Client, body: dict) -> tuple[str, str]:
    """Non-streaming completion: (text, finish_reason); fails on any non-200."""
    response = http.post("/v1/completions", json={**body, "stream": False})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return choice["text"], choice["finish_reason"]
