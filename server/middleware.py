"""Pure-ASGI middleware: request context (correlation id, logging, last-resort errors) and API key.

`RequestContextMiddleware` is the outermost layer so that every response, errors included, carries
`X-Correlation-Id`, and so that an unexpected exception becomes a 500 in the OpenAI shape (logged
with its traceback) instead of reaching the ASGI server.
"""
from __future__ import annotations

import hmac
import re
import time
import traceback
import uuid
from typing import Any

from cupyserve.runtime.log import correlation_id_var, log_event, request_id_var

from .errors import internal_error, unauthorized
from .responses import error_response

CORRELATION_HEADER = "x-correlation-id"
_CORRELATION_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")

# Paths that never need the API key: probes and scrapes must work without secrets.
OPEN_PATHS = frozenset({"/health", "/metrics"})


def resolve_correlation_id(supplied: str | None) -> str:
    """The client's id when it is safe to echo and log, else a fresh UUID4."""
    if supplied is not None and _CORRELATION_RE.fullmatch(supplied):
        return supplied
    return str(uuid.uuid4())


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RequestContextMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        correlation_id = resolve_correlation_id(_header(scope, CORRELATION_HEADER.encode()))
        correlation_token = correlation_id_var.set(correlation_id)
        request_token = request_id_var.set(f"req-{uuid.uuid4().hex}")
        started = time.perf_counter()
        status_holder = {"status": None}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-correlation-id"]
                headers.append((b"x-correlation-id", correlation_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # noqa: BLE001 - the last line of defence; the server must keep serving
            log_event("unhandled_exception", path=scope.get("path"), error=repr(exc),
                      traceback=traceback.format_exc())
            if status_holder["status"] is None:
                await error_response(internal_error())(scope, receive, send_with_id)
                status_holder["status"] = 500
        finally:
            log_event("http_request", method=scope.get("method"), path=scope.get("path"),
                      status=status_holder["status"],
                      duration_ms=round((time.perf_counter() - started) * 1000, 3))
            request_id_var.reset(request_token)
            correlation_id_var.reset(correlation_token)


class ApiKeyMiddleware:
    """Requires `Authorization: Bearer <key>` on every path except `OPEN_PATHS` when a key is set."""

    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.api_key or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        supplied = _header(scope, b"authorization") or ""
        scheme, _, token = supplied.partition(" ")
        # compare_digest: constant time, so response timing says nothing about the key.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                   self.api_key.encode()):
            response = error_response(unauthorized(), headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
