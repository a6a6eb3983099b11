"""A second server, with an API key, to check auth and graceful SIGTERM shutdown."""
from __future__ import annotations

import signal
import threading

import httpx
import orjson
import pytest

from server_process import start_server, stop_server

pytestmark = pytest.mark.e2e

KEY = "e2e-secret"


@pytest.fixture(scope="module")
def keyed_server(smollm2_gguf, tmp_path_factory):
    running = start_server(smollm2_gguf, tmp_path_factory.mktemp("keyed"),
                           extra_args=("--shutdown-grace-seconds", "30"),
                           extra_env={"CUPYSERVE_API_KEY": KEY})
    try:
        yield running
    finally:
        stop_server(running)


def test_api_key_required_except_health_and_metrics(keyed_server):
    url = keyed_server.url
    response = httpx.post(f"{url}/v1/completions", json={"prompt": "a", "max_tokens": 1})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/metrics").status_code == 200


def test_sigterm_lets_running_requests_finish_refuses_new_ones_and_exits_0(keyed_server):
    url, headers = keyed_server.url, {"Authorization": f"Bearer {KEY}"}
    first_chunk, result = threading.Event(), {}

    def stream() -> None:
        chunks = []
        with httpx.stream("POST", f"{url}/v1/completions", headers=headers, timeout=120,
                          json={"prompt": "Once upon a time", "max_tokens": 12, "ignore_eos": True,
                                "stream": True}) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    chunks.append(line[6:])
                    first_chunk.set()
        result["chunks"] = chunks

    thread = threading.Thread(target=stream)
    thread.start()
    assert first_chunk.wait(60)
    keyed_server.process.send_signal(signal.SIGTERM)
    refused = None
    for _ in range(50):  # the drain starts within a moment of the signal
        response = httpx.post(f"{url}/v1/completions", headers=headers,
                              json={"prompt": "a", "max_tokens": 1}, timeout=30)
        if response.status_code == 503:
            refused = response
            break
    thread.join(120)
    assert refused is not None and refused.json()["error"]["code"] == "shutting_down"
    chunks = result["chunks"]
    assert chunks[-1] == "[DONE]"
    assert orjson.loads(chunks[-2])["choices"][0]["finish_reason"] == "length"
    assert keyed_server.process.wait(60) == 0, keyed_server.log_tail()
