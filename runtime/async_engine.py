"""The engine on its own thread, fed through an asyncio API (compute never blocks the event loop).

The event loop only enqueues commands (add, abort) and awaits per-request queues; the engine
thread drains commands between steps, runs steps while work exists, and hands each delta back
with `loop.call_soon_threadsafe`.
"""
from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator

from .engine import LLMEngine
from .engine_protocol import RequestRejected
from .log import log_event, prompts_enabled
from .outputs import EngineError, StepOutput
from .sampling_params import SamplingParams
from .scheduler import RequestTooLarge

_MAX_WAITING_PER_SEQ_SLOT = 8  # waiting queue limit = this x max_num_seqs; beyond it: 503
# The engine thread holds the GIL between the NumPy calls of a step. A thread waiting for the GIL
# gets it only after this interval (CPython's default: 5 ms), and answering one HTTP request takes
# several acquisitions: at 5 ms, /health during a long prefill took ~15 ms. 0.5 ms keeps answers
# under 10 ms at a cost of a few more thread switches per step (compute is in NumPy, GIL-free).
_GIL_SWITCH_INTERVAL_S = 0.0005
# When the cores are busy (other processes, BLAS threads), the OS should run the event loop, which
# needs little CPU but needs it now, before the engine's compute: a nicer engine thread took
# /health during a long prefill on a loaded 2-core box from ~11 ms to ~2 ms. No effect when idle.
_ENGINE_THREAD_NICENESS = 5


def _lower_own_thread_priority() -> None:
    """Raise the calling thread's nice value (Linux: per thread); quietly nothing elsewhere."""
    try:
        thread_id = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread_id,
                       os.getpriority(os.PRIO_PROCESS, thread_id) + _ENGINE_THREAD_NICENESS)
    except (AttributeError, OSError):
        pass


@dataclass
class _Add:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    correlation_id: str | None
    queue: asyncio.Queue
    loop: asyncio.AbstractEventLoop


class AsyncEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_name = engine.model_name
        self.max_model_len = engine.max_model_len
        self.model_info = {"family": engine.config.family, "architecture": engine.config.architecture,
                           "quant_kind": engine.quant_kind, "device": engine.device}
        self._commands: deque[Any] = deque()
        self._wakeup = threading.Condition()
        self._streams: dict[str, tuple[asyncio.Queue, asyncio.AbstractEventLoop]] = {}
        self._is_accepting = True
        self._is_stopping = False
        self._thread = threading.Thread(target=self._run, name="cupyserve-engine", daemon=True)
        self.is_healthy = True

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        sys.setswitchinterval(min(sys.getswitchinterval(), _GIL_SWITCH_INTERVAL_S))
        self._thread.start()

    @property
    def is_accepting(self) -> bool:
        return self._is_accepting

    def stop_accepting(self) -> None:
        self._is_accepting = False

    @property
    def num_active(self) -> int:
        return len(self._streams)

    async def drain(self, grace_seconds: float) -> None:
        """Stop admission and wait (up to the grace period) for running requests to finish."""
        self.stop_accepting()
        deadline = time.monotonic() + grace_seconds
        while self._streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def shutdown(self) -> None:
        self._is_accepting = False
        with self._wakeup:
            self._is_stopping = True
            self._wakeup.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    # ------------------------------------------------------------------ requests

    def health(self) -> dict[str, Any]:
        return self.engine.health()

    async def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str,
                       correlation_id: str | None = None) -> AsyncIterator[StepOutput]:
        if not self._is_accepting:
            raise RequestRejected(EngineError("the server is shutting down", code="shutting_down",
                                              status=503, type="service_unavailable"))
        try:
            self.engine.check_admissible(len(prompt_ids), params)
        except RequestTooLarge as exc:
            raise RequestRejected(EngineError(str(exc), code="context_length_exceeded", status=400,
                                              type="invalid_request_error")) from None
        max_waiting = _MAX_WAITING_PER_SEQ_SLOT * self.engine.args.max_num_seqs
        if len(self._streams) >= max_waiting + self.engine.args.max_num_seqs:
            raise RequestRejected(EngineError("the server is saturated; retry later", code="overloaded",
                                              status=503, type="service_unavailable"))
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (queue, asyncio.get_running_loop())
        fields = {"prompt_ids": prompt_ids} if prompts_enabled() else {}
        log_event("request_start", request_id=request_id, correlation_id=correlation_id,
                  prompt_tokens=len(prompt_ids), max_tokens=params.max_tokens, **fields)
        self._send(_Add(request_id, prompt_ids, params, correlation_id, queue, asyncio.get_running_loop()))
        is_finished = False
        try:
            while True:
                out: StepOutput = await queue.get()
                if out.is_finished:
                    is_finished = True
                yield out
                if is_finished:
                    return
        finally:
            if not is_finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> bool:
        is_known = request_id in self._streams
        if is_known:
            self._send(("abort", request_id))
        return is_known

    def _send(self, command: Any) -> None:
        with self._wakeup:
            self._commands.append(command)
            self._wakeup.notify()

    # ------------------------------------------------------------------ engine thread

    def _run(self) -> None:
        _lower_own_thread_priority()
        engine = self.engine
        while True:
            with self._wakeup:
                while not self._commands and not engine.has_unfinished() and not self._is_stopping:
                    self._wakeup.wait(timeout=1.0)
                if self._is_stopping:
                    break
                commands = list(self._commands)
                self._commands.clear()
            for command in commands:
                self._apply(command)
            if engine.has_unfinished():
                try:
                    outputs = engine.step()
                except Exception as exc:  # a bug in a step must not take the server down
                    outputs = self._fail_all(exc)
                for out in outputs:
                    self._deliver(out)
        for request_id in list(self._streams):
            out = engine.abort_request(request_id)
            if out is not None:
                self._deliver(out)

    def _apply(self, command: Any) -> None:
        if isinstance(command, _Add):
            try:
                self.engine.add_request(command.request_id, command.prompt_ids, command.params,
                                        command.correlation_id)
            except Exception as exc:
                status = 400 if isinstance(exc, ValueError) else 500
                self._deliver(StepOutput(request_id=command.request_id, finish_reason="error",
                                         error=EngineError(str(exc), code="invalid_request" if status == 400
                                                           else "internal_error", status=status)))
        else:
            _, request_id = command
            out = self.engine.abort_request(request_id)
            if out is not None:
                self._deliver(out)

    def _fail_all(self, exc: Exception) -> list[StepOutput]:
        log_event("error", kind="step_failed", message=repr(exc))
        error = EngineError(f"internal error while running the batch: {exc!r}", code="internal_error")
        outputs = []
        for request_id in list(self.engine.requests):
            out = self.engine.abort_request(request_id)
            if out is not None:
                out.finish_reason = "error"
                out.error = error
                outputs.append(out)
        return outputs

    def _deliver(self, out: StepOutput) -> None:
        target = self._streams.get(out.request_id)
        if target is None:
            return
        if out.is_finished:
            del self._streams[out.request_id]
        queue, loop = target
        try:
            loop.call_soon_threadsafe(queue.put_nowait, out)
        except RuntimeError:  # the loop is closed (shutdown)
            pass

