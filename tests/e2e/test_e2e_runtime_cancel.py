"""POST /v1/cancel on a running stream: 202, the stream ends "cancelled" then [DONE]; idempotent."""
from __future__ import annotations

import orjson
import pytest

from runtime_support import assert_healthy_and_idle

pytestmark = pytest.mark.e2e


def test_cancel_ends_a_running_stream_and_is_idempotent(runtime_server, runtime_http):
    http = runtime_http
    body = {"prompt": "Write a long story about a lighthouse keeper.", "max_tokens": 400,
            "ignore_eos": True, "temperature": 0, "stream": True}
    payloads, cancel_statuses = [], []
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            payloads.append(data if data == "[DONE]" else orjson.loads(data))
            if len(payloads) == 2:  # mid-stream: tokens are flowing
                completion_id = payloads[0]["id"]
                for _ in range(2):
                    reply = http.post("/v1/cancel", json={"id": completion_id})
                    cancel_statuses.append(reply.status_code)
                    assert reply.json()["status"] == "accepted"
    assert cancel_statuses == [202, 202]
    assert payloads[-1] == "[DONE]"
    final = payloads[-2]["choices"][0]
    assert final["finish_reason"] == "cancelled"
    assert all(p["choices"][0]["finish_reason"] is None for p in payloads[:-2])
    assert len(payloads) - 2 < body["max_tokens"]  # it did stop early
    # After the stream ended: still 202 (idempotent), and an id never issued is 404.
    assert http.post("/v1/cancel", json={"id": completion_id}).status_code == 202
    assert http.post("/v1/cancel", json={"id": "cmpl-never-issued"}).status_code == 404
    assert_healthy_and_idle(runtime_server, http)
