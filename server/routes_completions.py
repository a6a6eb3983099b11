"""POST /v1/completions: legacy text completions, batched prompts, n, echo, logprobs, streaming.

Choice order for P prompts x n is `index = prompt_index * n + j` (what vLLM does and lm-eval
relies on). With `seed` s, choice j of every prompt samples with seed s + j (mod 2**64).
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Sequence

from starlette.requests import Request
from starlette.responses import Response

from cupyserve.runtime.log import log_event, prompts_enabled, request_id_var
from cupyserve.runtime.outputs import StepOutput

from .completion_request import DEFAULT_MAX_TOKENS, CompletionRequest, parse_completion_request
from .dispatch import (GenerationJob, distinct_prompt_tokens, respond_json, respond_stream,
                       usage)
from .generation import ChoiceResult, ChoiceSpec, generated_tokens
from .logprobs_format import TokenNamer, completion_logprobs, merge_completion_logprobs
from .prompt_tokens import completion_prompt_ids, echo_text
from .request_body import read_json_object
from .server_state import ServerState
from .token_budget import resolve_max_tokens


@dataclass(frozen=True)
class CompletionContext:
    """What formatting needs besides the engine outputs."""

    completion_id: str
    created: int
    model: str
    request: CompletionRequest
    job: GenerationJob
    echo_texts: tuple[str, ...]  # per prompt; empty strings when echo is off
    namer: TokenNamer

    def envelope(self, choices: list[dict]) -> dict:
        return {"id": self.completion_id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": choices}

    def logprobs_for(self, choice: ChoiceSpec, token_ids: Sequence[int], entries: Sequence,
                     prompt_entries: Sequence | None, offset: int, with_echo: bool) -> tuple[dict | None, int]:
        """Logprobs of (echoed prompt +) these tokens, starting at text offset `offset`."""
        num_top = self.request.logprobs
        if num_top is None:
            return None, offset
        if with_echo:
            entries_for_prompt = list(prompt_entries or [None] * len(choice.prompt_ids))
            prompt_part, offset = completion_logprobs(self.namer, choice.prompt_ids,
                                                      entries_for_prompt, offset, num_top)
        generated, offset = completion_logprobs(self.namer, token_ids, entries, offset, num_top)
        return (merge_completion_logprobs(prompt_part, generated) if with_echo else generated), offset


async def create_completion(request: Request) -> Response:
    state: ServerState = request.app.state.server
    parsed = parse_completion_request(await read_json_object(request))
    state.check_model(parsed.model)
    state.check_admission()
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    request_id_var.set(completion_id)
    tokenizer = state.engine.tokenizer
    prompt_ids = [completion_prompt_ids(tokenizer, p) for p in parsed.prompts]
    choices = []
    n = parsed.sampling.n
    want_prompt_logprobs = parsed.echo and parsed.logprobs is not None
    for prompt_index, ids in enumerate(prompt_ids):
        max_tokens = resolve_max_tokens(parsed.max_tokens, DEFAULT_MAX_TOKENS, len(ids),
                                        state.engine.max_model_len)
        for j in range(n):
            params = parsed.sampling.to_params(
                max_tokens=max_tokens, choice=j, vocab_size=tokenizer.vocab_size,
                logprobs=parsed.logprobs,
                prompt_logprobs=parsed.logprobs if want_prompt_logprobs else None)
            index = prompt_index * n + j
            choices.append(ChoiceSpec(index, prompt_index, ids, params, f"{completion_id}-{index}"))
    job = GenerationJob(completion_id, tuple(choices))
    log_event("completion_request", completion_id=completion_id, prompts=len(prompt_ids), n=n,
              stream=parsed.stream, prompt_tokens=[len(ids) for ids in prompt_ids],
              max_tokens=choices[0].params.max_tokens,
              **({"prompt": [p.text for p in parsed.prompts]} if prompts_enabled() else {}))
    context = CompletionContext(
        completion_id=completion_id, created=int(time.time()), model=state.engine.model_name,
        request=parsed, job=job,
        echo_texts=tuple(echo_text(tokenizer, p, ids) if parsed.echo else ""
                         for p, ids in zip(parsed.prompts, prompt_ids)),
        namer=TokenNamer(tokenizer, parsed.return_tokens_as_token_ids))
    if parsed.stream:
        return await respond_stream(request, state, job, CompletionStreamFormatter(context))
    return await respond_json(request, state, job, lambda results: build_response(context, results))


def build_response(context: CompletionContext, results: Sequence[ChoiceResult]) -> dict:
    choices = []
    for spec, result in zip(context.job.choices, results):
        prefix = context.echo_texts[spec.prompt_index]
        logprobs, _ = context.logprobs_for(spec, result.token_ids, result.logprobs,
                                           result.prompt_logprobs, 0, context.request.echo)
        choices.append({"index": spec.index, "text": prefix + result.text, "logprobs": logprobs,
                        "finish_reason": result.finish_reason, "stop_reason": result.stop_reason})
    body = context.envelope(choices)
    body["usage"] = usage(distinct_prompt_tokens(context.job.choices),
                          sum(r.num_generated_tokens for r in results))
    return body


@dataclass
class CompletionStreamFormatter:
    """Chunks have the full-response shape with `text` as the delta; echo rides on the first."""

    context: CompletionContext
    started: set[int] = field(default_factory=set)
    offsets: dict[int, int] = field(default_factory=dict)
    generated: dict[int, int] = field(default_factory=dict)
    counted: dict[int, int] = field(default_factory=dict)

    def chunks_for(self, index: int, output: StepOutput) -> list[dict]:
        spec = self.context.job.choices[index]
        first = index not in self.started
        self.started.add(index)
        with_echo = first and self.context.request.echo
        text = (self.context.echo_texts[spec.prompt_index] if with_echo else "") + output.text
        self.counted[index] = self.counted.get(index, 0) + len(output.token_ids)
        self.generated[index] = generated_tokens(output, self.counted[index])
        logprobs, self.offsets[index] = self.context.logprobs_for(
            spec, output.token_ids, output.logprobs, output.prompt_logprobs,
            self.offsets.get(index, 0), with_echo)
        if not text and not output.token_ids and not output.is_finished:
            return []  # nothing to say (e.g. a prefill chunk)
        choice = {"index": index, "text": text, "logprobs": logprobs,
                  "finish_reason": output.finish_reason, "stop_reason": output.stop_reason}
        chunk = self.context.envelope([choice])
        if self.context.request.include_usage:
            chunk["usage"] = None
        return [chunk]

    def closing_chunks(self) -> list[dict]:
        if not self.context.request.include_usage:
            return []
        chunk = self.context.envelope([])
        chunk["usage"] = usage(distinct_prompt_tokens(self.context.job.choices),
                               sum(self.generated.values()))
        return [chunk]
