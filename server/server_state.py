"""What the HTTP layer keeps between requests: the engine, admission, and live completions.

Live completions are tracked so that `POST /v1/cancel` can abort every choice of a completion id
and so that shutdown can wait for (or abort) requests still running.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Iterable

from cupyserve.runtime.engine_protocol import EngineClient
from cupyserve.runtime.reasoning import reasoning_format

from .errors import model_not_found, unavailable

RECENT_COMPLETIONS = 4096  # finished ids remembered so a late cancel is still a no-op 202


class ServerState:
    def __init__(self, engine: EngineClient, model_aliases: Iterable[str] = ()) -> None:
        self.engine = engine
        self.served_names = tuple(dict.fromkeys([engine.model_name, *model_aliases]))
        self.reasoning_format = model_reasoning_format(engine.tokenizer)
        self.created = int(time.time())
        self._started = time.monotonic()
        self._draining = False
        self._active: dict[str, tuple[str, ...]] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self._started

    @property
    def accepting(self) -> bool:
        return not self._draining and bool(self.engine.is_accepting)

    def check_admission(self) -> None:
        if not self.accepting:
            raise unavailable("The server is shutting down and accepts no new requests.",
                              code="shutting_down")

    def check_model(self, model: str | None) -> None:
        """A request may omit `model`; when given it must be the served name or an alias."""
        if model is not None and model not in self.served_names:
            raise model_not_found(model)

    # Live completions -------------------------------------------------------------------

    def register(self, completion_id: str, request_ids: tuple[str, ...]) -> None:
        self._active[completion_id] = request_ids

    def unregister(self, completion_id: str) -> None:
        if self._active.pop(completion_id, None) is not None:
            self._recent[completion_id] = None
            while len(self._recent) > RECENT_COMPLETIONS:
                self._recent.popitem(last=False)

    def cancel(self, completion_id: str) -> bool:
        """Abort every choice of a completion. False when the id was never seen (or long gone)."""
        request_ids = self._active.get(completion_id)
        if request_ids is None:
            return completion_id in self._recent
        for request_id in request_ids:
            self.engine.abort(request_id)
        return True

    @property
    def num_active(self) -> int:
        return len(self._active)

    # Shutdown ---------------------------------------------------------------------------

    def begin_drain(self) -> None:
        self._draining = True

    @property
    def draining(self) -> bool:
        return self._draining

    async def wait_idle(self, timeout: float, poll_s: float = 0.05) -> bool:
        """Wait until no completion is live; True if that happened within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self._active and time.monotonic() < deadline:
            await asyncio.sleep(poll_s)
        return not self._active

    def abort_all(self) -> None:
        for completion_id in list(self._active):
            self.cancel(completion_id)


def model_reasoning_format(tokenizer) -> str | None:
    """How this model's chat output splits into reasoning and content (runtime.reasoning's rule
    over its chat template and vocabulary); None: all of it is content."""
    vocab = getattr(tokenizer, "vocab", None)  # absent on tokenizers without a token list
    return reasoning_format(getattr(tokenizer, "chat_template", None), getattr(vocab, "tokens", ()))
