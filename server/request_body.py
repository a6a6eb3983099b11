"""Reading the JSON body of a Starlette request (the one place that touches raw bytes)."""
from __future__ import annotations

from starlette.requests import Request

from .request_fields import parse_json_object


async def read_json_object(request: Request) -> dict:
    return parse_json_object(await request.body(), request.headers.get("content-type"))
