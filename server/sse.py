"""Server-sent events: the byte framing and an ASGI response that stops on client disconnect.

Framing is `data: <json>\\n\\n` per event and `data: [DONE]\\n\\n` last, which is what the OpenAI
SDK's decoder expects. The response races the event source against the client's
`http.disconnect`; when the client goes away first, the source is cancelled and closed, which is
how generation gets aborted (the source's `finally` aborts its engine requests).
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import orjson

from .disconnect import wait_for_disconnect

SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # keep reverse proxies from buffering the stream
]


def sse_event(payload: Any) -> bytes:
    """One SSE event carrying `payload` as compact JSON."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class EventStreamResponse:
    """ASGI response streaming `events` (already-framed bytes) with status 200."""

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        self.events = events

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(SSE_HEADERS)})
        writer = asyncio.ensure_future(self._write_all(send))
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (writer, watcher):
                task.cancel()
            await asyncio.gather(writer, watcher, return_exceptions=True)
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
        if writer.done() and not writer.cancelled() and writer.exception() is not None:
            error = writer.exception()
            if not isinstance(error, OSError):  # a vanished client is not a server error
                raise error

    async def _write_all(self, send: Any) -> None:
        async for chunk in self.events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
