"""Running the choices of one HTTP request on the engine, concurrently, as one event stream.

Each choice (prompt x n) is one engine sequence. Their outputs are merged in arrival order.
Whatever ends the iteration (all finished, an error, the consumer closing us because the client
went away) the `finally` closes every engine stream and aborts every unfinished choice, so no
sequence outlives its HTTP request.
"""
from __future__ import annotations

import asyncio
import traceback
from dataclasses import dataclass, field
from typing import AsyncIterator, Sequence

from cupyserve.runtime.engine_protocol import EngineClient, RequestRejected
from cupyserve.runtime.log import log_event
from cupyserve.runtime.outputs import StepOutput, TokenLogprob
from cupyserve.runtime.sampling_params import SamplingParams

from .errors import ErrorInfo, from_engine_error, internal_error

@dataclass(frozen=True)
class ChoiceSpec:
    """One engine sequence: choice `index` of the response, for prompt `prompt_index`."""

    index: int
    prompt_index: int
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    request_id: str

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("a choice needs at least one prompt token")


class GenerationFailed(Exception):
    """A choice could not be admitted or failed in the engine; `info` is what the client gets."""

    def __init__(self, info: ErrorInfo, index: int | None = None) -> None:
        super().__init__(info.message)
        self.info = info
        self.index = index


@dataclass
class ChoiceResult:
    """Everything one choice produced, accumulated from its deltas (non-streaming responses)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_generated_tokens: int = 0

    def add(self, output: StepOutput) -> None:
        self.text += output.text
        self.token_ids.extend(output.token_ids)
        self.logprobs.extend(output.logprobs)
        if output.prompt_logprobs is not None:
            self.prompt_logprobs = output.prompt_logprobs
        if output.is_finished:
            self.finish_reason = output.finish_reason
            self.stop_reason = output.stop_reason
        self.num_generated_tokens = generated_tokens(output, len(self.token_ids))


def generated_tokens(output: StepOutput, counted: int) -> int:
    """The engine's count when it gives one (it may count tokens it did not emit, like EOS)."""
    return max(output.num_generated_tokens, counted)


async def stream_choices(engine: EngineClient, choices: Sequence[ChoiceSpec],
                         correlation_id: str | None) -> AsyncIterator[tuple[int, StepOutput]]:
    """Yield (choice index, delta) until every choice has finished; raise GenerationFailed on the
    first rejection or engine error (the other choices are then aborted)."""
    queue: asyncio.Queue[tuple[int, StepOutput | None, BaseException | None]] = asyncio.Queue()
    finished: set[int] = set()

    async def pump(choice: ChoiceSpec) -> None:
        stream = engine.generate(list(choice.prompt_ids), choice.params, choice.request_id,
                                 correlation_id)
        try:
            async for output in stream:
                await queue.put((choice.index, output, None))
                if output.is_finished:
                    return
            await queue.put((choice.index, None, RuntimeError("engine stream ended unfinished")))
        except Exception as exc:  # noqa: BLE001 - forwarded to the consumer, which decides
            await queue.put((choice.index, None, exc))
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    tasks = [asyncio.ensure_future(pump(c)) for c in choices]
    try:
        while len(finished) < len(choices):
            index, output, error = await queue.get()
            if error is not None:
                raise _as_failure(error, index)
            assert output is not None
            if output.finish_reason == "error":
                finished.add(index)
                info = from_engine_error(output.error) if output.error else internal_error()
                raise GenerationFailed(info, index)
            if output.is_finished:
                finished.add(index)
            yield index, output
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for choice in choices:
            if choice.index not in finished:
                engine.abort(choice.request_id)  # idempotent; closing the stream may have done it


def _as_failure(error: BaseException, index: int) -> GenerationFailed:
    if isinstance(error, GenerationFailed):
        return error
    if isinstance(error, RequestRejected):
        return GenerationFailed(from_engine_error(error.error), index)
    log_event("generation_exception", choice=index, error=repr(error),
              traceback="".join(traceback.format_exception(error)))
    return GenerationFailed(internal_error(), index)


async def collect_choices(engine: EngineClient, choices: Sequence[ChoiceSpec],
                          correlation_id: str | None) -> list[ChoiceResult]:
    results = [ChoiceResult() for _ in choices]
    async for index, output in stream_choices(engine, choices, correlation_id):
        results[index].add(output)
    return results
