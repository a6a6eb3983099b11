"""A tensor-parallel rank that dies under a running server: the in-flight request fails with a
clear error, /health stops answering 200, and the server exits non-zero (no hang), so that a
supervisor (Kubernetes, systemd) restarts it."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oracle"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from make_synthetic_family_gguf import VOCAB_DIR, write  # noqa: E402
from server_process import start_server, stop_server  # noqa: E402

EXIT_TIMEOUT_S = 30.0


def worker_pids(log_path: Path) -> list[int]:
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"tensor_parallel_ready"' in line:
            return json.loads(line)["worker_pids"]
    raise AssertionError("no tensor_parallel_ready event in the server log")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    if not VOCAB_DIR.is_dir():
        pytest.skip(f"{VOCAB_DIR} (llama.cpp's vocab fixtures) not found; set CUPYSERVE_VOCAB_DIR")
    path = tmp_path_factory.mktemp("tp-server") / "phi3-q4_0.gguf"
    write("phi3", "q4_0", path)
    return path


def start_tp2_server(model: Path, workdir: Path):
    return start_server(model, workdir, ("--tensor-parallel-size", "2"), {"OPENBLAS_NUM_THREADS": "1"})


def test_sigterm_stops_every_rank_and_exits_zero(model, tmp_path) -> None:
    server = start_tp2_server(model, tmp_path)
    (pid,) = worker_pids(server.log_path)
    body = {"model": server.model, "prompt": "Hello", "max_tokens": 4, "temperature": 0}
    assert httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).status_code == 200
    assert stop_server(server) == 0, server.log_tail()
    log = server.log_path.read_text()
    assert "tensor_parallel_failure" not in log, server.log_tail()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the worker is gone too


def test_killed_rank_fails_the_request_and_the_server_exits_non_zero(model, tmp_path) -> None:
    server = start_tp2_server(model, tmp_path)
    try:
        assert httpx.get(f"{server.url}/health").json()["tensor_parallel_size"] == 2
        (pid,) = worker_pids(server.log_path)
        body = {"model": server.model, "prompt": "Once upon a time", "max_tokens": 1000,
                "ignore_eos": True, "temperature": 0, "stream": True}
        events = []
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[len("data: "):])
                if len(events) == 1:
                    os.kill(pid, signal.SIGKILL)  # rank 1 dies mid-generation
        errors = [json.loads(e)["error"] for e in events if e.startswith('{"error"')]
        assert errors and "tensor-parallel" in errors[0]["message"] and "rank 1" in errors[0]["message"], events[-3:]
        assert len(events) < 1000  # it stopped, it did not finish
        try:
            health = httpx.get(f"{server.url}/health", timeout=5)
            assert health.status_code == 503, health.text
            assert health.json()["status"] in ("unhealthy", "shutting_down")
        except httpx.TransportError:
            pass  # already gone: the exit code below is the proof
        assert server.process.wait(EXIT_TIMEOUT_S) == 1, server.log_tail()
        assert '"event":"fatal"' in server.log_path.read_text().replace(" ", "")
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
