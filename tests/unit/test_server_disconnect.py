"""A client that goes away aborts its engine sequences, streaming or not (driven at ASGI level)."""
from __future__ import annotations

import asyncio

import orjson

from cupyserve.server.app import create_app
from cupyserve.server.sse import SSE_DONE, sse_event
from test_server_fake_engine import FakeEngine


def test_sse_event_framing():
    assert sse_event({"a": 1}) == b'data: {"a":1}\n\n'
    assert SSE_DONE == b"data: [DONE]\n\n"


async def _call(app, body: dict, disconnect_when: asyncio.Event) -> list[dict]:
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/completions", "raw_path": b"/v1/completions",
             "query_string": b"", "root_path": "", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 8000)}
    sent: list[dict] = []
    body_sent = False

    async def receive():
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": orjson.dumps(body), "more_body": False}
        await disconnect_when.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            disconnect_when.set()  # the client reads one chunk and leaves

    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return sent


def test_streaming_disconnect_aborts_every_choice():
    engine = FakeEngine(step_delay_s=0.02, reply="x" * 50, max_model_len=256)
    app = create_app(engine)

    async def main():
        return await _call(app, {"prompt": "a", "max_tokens": 50, "n": 2, "stream": True}, asyncio.Event())

    sent = asyncio.run(main())
    assert sent[0]["status"] == 200
    ids = sorted(c.request_id for c in engine.calls)
    assert len(ids) == 2
    assert sorted(engine.closed) == ids  # both engine streams were closed
    assert sorted(set(engine.aborted)) == ids
    assert not any(m.get("body", b"").endswith(SSE_DONE) for m in sent[1:])
    assert app.state.server.num_active == 0


def test_non_streaming_disconnect_aborts():
    engine = FakeEngine(step_delay_s=0.02, reply="x" * 50, max_model_len=256)
    app = create_app(engine)

    async def main():
        gone = asyncio.Event()
        asyncio.get_running_loop().call_later(0.1, gone.set)
        return await _call(app, {"prompt": "a", "max_tokens": 50}, gone)

    sent = asyncio.run(main())
    assert sent[0]["status"] == 499
    assert [c.request_id for c in engine.calls] == engine.aborted
    assert app.state.server.num_active == 0
