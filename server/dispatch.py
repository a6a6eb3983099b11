"""Running a generation job to its HTTP response: JSON, or SSE, with one set of failure rules.

- Rejection or engine error before the first byte: the error's own status (400/503/500...).
- Error after the SSE headers were sent: a final `data: {"error": ...}` event, then `[DONE]`.
- Client gone (either mode): the job is cancelled, which aborts every engine sequence of it.
The completion id is registered for `POST /v1/cancel` while the job runs.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Protocol, Sequence

from starlette.requests import Request
from starlette.responses import Response

from cupyserve.runtime.log import correlation_id_var, log_event
from cupyserve.runtime.outputs import StepOutput

from .disconnect import ClientDisconnected, run_until_disconnect
from .errors import ErrorInfo, internal_error
from .generation import ChoiceResult, ChoiceSpec, GenerationFailed, collect_choices, stream_choices
from .responses import JSONResponse, error_response
from .server_state import ServerState
from .sse import SSE_DONE, EventStreamResponse, sse_event

# nginx's "client closed request": never seen by the client, but it keeps access logs honest.
CLIENT_CLOSED = ErrorInfo(499, "client closed the connection", code="client_disconnected")


class StreamFormatter(Protocol):
    def chunks_for(self, index: int, output: StepOutput) -> list[dict]:
        """The SSE payloads for one delta of choice `index` (possibly none)."""

    def closing_chunks(self) -> list[dict]:
        """Payloads after every choice finished (the usage chunk when asked for)."""


@dataclass(frozen=True)
class GenerationJob:
    completion_id: str
    choices: tuple[ChoiceSpec, ...]

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError("a generation job needs at least one choice")
        if [c.index for c in self.choices] != list(range(len(self.choices))):
            raise ValueError("choice indexes must be 0..len-1 in order")

    @property
    def request_ids(self) -> tuple[str, ...]:
        return tuple(c.request_id for c in self.choices)


async def respond_json(request: Request, state: ServerState, job: GenerationJob,
                       build: Callable[[Sequence[ChoiceResult]], dict]) -> Response:
    state.register(job.completion_id, job.request_ids)
    try:
        results = await run_until_disconnect(
            collect_choices(state.engine, job.choices, correlation_id_var.get()), request.receive)
    except GenerationFailed as failure:
        return error_response(failure.info)
    except ClientDisconnected:
        log_event("client_disconnected", completion_id=job.completion_id)
        return error_response(CLIENT_CLOSED)
    finally:
        state.unregister(job.completion_id)
    return JSONResponse(build(results))


async def respond_stream(request: Request, state: ServerState, job: GenerationJob,
                         formatter: StreamFormatter) -> Response:
    """Wait for the first delta before sending headers, so a rejected request gets its status."""
    state.register(job.completion_id, job.request_ids)
    outputs = stream_choices(state.engine, job.choices, correlation_id_var.get())

    async def first_output() -> tuple[int, StepOutput]:
        return await outputs.__anext__()

    try:
        first = await run_until_disconnect(first_output(), request.receive)
    except BaseException as exc:
        await outputs.aclose()
        state.unregister(job.completion_id)
        if isinstance(exc, GenerationFailed):
            return error_response(exc.info)
        if isinstance(exc, ClientDisconnected):
            log_event("client_disconnected", completion_id=job.completion_id)
            return error_response(CLIENT_CLOSED)
        raise
    return EventStreamResponse(_sse_body(first, outputs, formatter, state, job.completion_id))


async def _sse_body(first: tuple[int, StepOutput], outputs: AsyncIterator[tuple[int, StepOutput]],
                    formatter: StreamFormatter, state: ServerState,
                    completion_id: str) -> AsyncIterator[bytes]:
    try:
        try:
            for payload in formatter.chunks_for(*first):
                yield sse_event(payload)
            async for index, output in outputs:
                for payload in formatter.chunks_for(index, output):
                    yield sse_event(payload)
            for payload in formatter.closing_chunks():
                yield sse_event(payload)
        except GenerationFailed as failure:
            yield sse_event(failure.info.body())
        except Exception as exc:  # noqa: BLE001 - headers are out; report in-band and keep serving
            log_event("stream_exception", completion_id=completion_id, error=repr(exc),
                      traceback=traceback.format_exc())
            yield sse_event(internal_error().body())
        yield SSE_DONE
    finally:
        await outputs.aclose()
        state.unregister(completion_id)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def distinct_prompt_tokens(choices: Sequence[ChoiceSpec]) -> int:
    """Prompt tokens counted once per prompt, not once per choice (as OpenAI and vLLM count)."""
    seen: dict[int, int] = {}
    for choice in choices:
        seen[choice.prompt_index] = len(choice.prompt_ids)
    return sum(seen.values())
