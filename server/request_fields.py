"""Typed readers for fields of a parsed JSON request body.

OpenAI semantics: a missing key and an explicit `null` both mean "use the default"; unknown keys
are ignored; a value of the wrong JSON type is a 400 naming the field. JSON booleans are not
accepted where numbers are expected (Python's `bool` is an `int`, JSON's is not).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import orjson

from .errors import invalid_request

MAX_BODY_BYTES = 4 * 1024 * 1024  # generous: 32768-char prompts in a batch fit easily


def parse_json_object(raw: bytes, content_type: str | None) -> dict:
    """The body as a JSON object, or a 400 for a non-JSON content type, bad JSON or a non-object."""
    if content_type:
        media = content_type.split(";", 1)[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise invalid_request(f"Content-Type must be application/json, got {media!r}",
                                  code="invalid_content_type")
    if len(raw) > MAX_BODY_BYTES:
        raise invalid_request(f"request body exceeds {MAX_BODY_BYTES} bytes", code="body_too_large")
    if not raw.strip():
        raise invalid_request("request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid_request("request body must be a JSON object", code="invalid_json")
    return body


def _type_error(name: str, expected: str, value: Any) -> Exception:
    return invalid_request(f"'{name}' must be {expected}, got {type(value).__name__} {value!r:.60}",
                           param=name, code="invalid_type")


def get_int(body: Mapping[str, Any], name: str, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # some clients serialize 5 as 5.0
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, "an integer", value)
    return value


def get_number(body: Mapping[str, Any], name: str, default: float | None) -> float | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _type_error(name, "a number", value)
    return float(value)


def get_bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _type_error(name, "a boolean", value)
    return value


def get_str(body: Mapping[str, Any], name: str, default: str | None) -> str | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _type_error(name, "a string", value)
    return value


def get_object(body: Mapping[str, Any], name: str) -> dict | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _type_error(name, "an object", value)
    return value


def check_range(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise invalid_request(f"'{name}' {message}", param=name)


def get_stream_options(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage). `stream_options` only makes sense with `stream: true` (vLLM: 400)."""
    stream = get_bool(body, "stream", False)
    options = get_object(body, "stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise invalid_request("'stream_options' is only allowed when 'stream' is true",
                              param="stream_options")
    return stream, get_bool(options, "include_usage", False)


def reject_unsupported(body: Mapping[str, Any], name: str, allowed: tuple = (None,)) -> None:
    """A field we know but cannot honour is a 400, not a silent ignore (the client relies on it)."""
    if body.get(name) not in allowed:
        raise invalid_request(f"'{name}' is not supported by this server", param=name,
                              code="unsupported_parameter")
