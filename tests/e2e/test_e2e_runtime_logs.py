"""The server's stderr is JSON lines covering a whole life: startup to shutdown.

Every line has `event`, `ts`, `correlation_id` and `request_id`; model loading reports percent
0/25/50/75/100; each request logs `request_start` and `request_end` (tokens in/out, ttft,
duration, finish reason) under the caller's correlation id; prompts stay out of the log unless
--log-prompts (checked with it on in test_e2e_runtime_oom.py).
"""
from __future__ import annotations

import httpx
import orjson
import pytest

from runtime_support import start_runtime_server
from server_process import stop_server

pytestmark = pytest.mark.e2e

SECRET_PROMPT = "Zanzibar-marmalade-7731 is my password, please remember it"
LIFECYCLE = ["startup", "model_load_start", "model_load_progress", "model_load_complete", "ready",
             "request_start", "request_end", "shutdown"]


def test_json_log_lines_cover_the_lifecycle_without_prompts(smollm2_gguf, tmp_path):
    server = start_runtime_server(smollm2_gguf, tmp_path)
    try:
        response = httpx.post(f"{server.url}/v1/completions", timeout=120,
                              headers={"X-Correlation-Id": "logs-e2e-1"},
                              json={"prompt": SECRET_PROMPT, "max_tokens": 4, "ignore_eos": True})
        assert response.status_code == 200
    finally:
        code = stop_server(server)
    assert code == 0, server.log_tail()

    text = server.log_path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), [l for l in lines if not l.startswith("{")][:3]
    events = [orjson.loads(line) for line in lines]
    for event in events:
        assert {"event", "ts", "correlation_id", "request_id"} <= event.keys(), event
        assert isinstance(event["ts"], float)
    names = [e["event"] for e in events]
    order = [names.index(name) for name in LIFECYCLE]
    assert order == sorted(order), f"events out of order: {names}"
    assert [e["percent"] for e in events if e["event"] == "model_load_progress"] == [0, 25, 50, 75, 100]

    start = next(e for e in events if e["event"] == "request_start")
    end = next(e for e in events if e["event"] == "request_end")
    assert start["correlation_id"] == end["correlation_id"] == "logs-e2e-1"
    assert start["request_id"] and start["request_id"] == end["request_id"]
    assert end["prompt_tokens"] == start["prompt_tokens"] > 5 and end["output_tokens"] == 4
    assert end["finish_reason"] == "length"
    assert 0 < end["ttft"] <= end["duration"]
    assert "Zanzibar" not in text and "prompt_ids" not in text and "prompt_text" not in text
    assert names[-1] == "shutdown"
