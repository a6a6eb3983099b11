"""JSON responses serialized with orjson (fast, and non-finite floats become null, never `NaN`)."""
from __future__ import annotations

from typing import Any, Mapping

import orjson
from starlette.responses import Response

from .errors import ErrorInfo


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(info: ErrorInfo, headers: Mapping[str, str] | None = None) -> JSONResponse:
    extra = dict(headers or {})
    if info.status in (429, 503):
        extra.setdefault("Retry-After", "1")  # the OpenAI SDK honours it when retrying
    return JSONResponse(info.body(), status_code=info.status, headers=extra)
