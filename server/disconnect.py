"""Noticing that the HTTP client went away, so its generation can be aborted."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, TypeVar

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before the response was ready; the work was cancelled."""


async def wait_for_disconnect(receive: Any) -> None:
    """Return when the ASGI server reports `http.disconnect`.

    Only valid once the request body was read: from then on the next message is the disconnect.
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_until_disconnect(work: Awaitable[T], receive: Any) -> T:
    """Await `work`, cancelling it (which aborts its sequences) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        raise ClientDisconnected()
    return task.result()
