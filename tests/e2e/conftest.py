"""E2e fixtures: the real server, shared by every e2e test of the session, and clients for it."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from runtime_support import runtime_http, runtime_server  # noqa: F401 - one server for the runtime modules
from server_process import RunningServer, start_server, stop_server


@pytest.fixture(scope="session")
def server(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    running = start_server(smollm2_gguf, tmp_path_factory.mktemp("server"))
    try:
        yield running
    finally:
        code = stop_server(running)
    assert code == 0, f"server exited with {code}:\n{running.log_tail()}"


@pytest.fixture()
def http(server: RunningServer):
    with httpx.Client(base_url=server.url, timeout=120.0) as client:
        yield client


@pytest.fixture()
def openai_client(server: RunningServer):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120.0)
