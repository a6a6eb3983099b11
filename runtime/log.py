"""Structured JSON logging: one line per event with `event`, `ts`, `correlation_id`, `request_id`.

The ids come from context variables so that code deep in the runtime logs them without passing
them around; the engine thread sets them explicitly per request when it logs.
"""
from __future__ import annotations

import contextvars
import sys
import threading
import time
from typing import Any, TextIO

import orjson

correlation_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_lock = threading.Lock()
_stream: TextIO = sys.stderr
_log_prompts = False


def configure(stream: TextIO | None = None, log_prompts: bool | None = None) -> None:
    global _stream, _log_prompts
    if stream is not None:
        _stream = stream
    if log_prompts is not None:
        _log_prompts = log_prompts


def prompts_enabled() -> bool:
    return _log_prompts


def log_event(event: str, **fields: Any) -> None:
    """Write one JSON line. Explicit `correlation_id`/`request_id` fields win over the context."""
    record: dict[str, Any] = {
        "event": event,
        "ts": round(time.time(), 6),
        "correlation_id": fields.pop("correlation_id", correlation_id_var.get()),
        "request_id": fields.pop("request_id", request_id_var.get()),
    }
    record.update(fields)
    line = orjson.dumps(record, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
    with _lock:
        _stream.write(line.decode() + "\n")
        _stream.flush()


class ProgressBar:
    """A text progress bar on a TTY; silent elsewhere (the JSON events carry the progress)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = max(int(total), 1)
        self.stream = stream or sys.stderr
        self.is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_percent = -1

    def update(self, done: int) -> None:
        if not self.is_tty:
            return
        percent = min(100, int(100 * done / self.total))
        if percent == self._last_percent:
            return
        self._last_percent = percent
        filled = percent * 30 // 100
        bar = "#" * filled + "-" * (30 - filled)
        self.stream.write(f"\r{self.label} [{bar}] {percent:3d}%")
        if percent == 100:
            self.stream.write("\n")
        self.stream.flush()
