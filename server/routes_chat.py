"""POST /v1/chat/completions: messages through the model's chat template, then generation.

For a model with a reasoning format (harmony: `ServerState.reasoning_format`), the generated text
goes through `runtime.reasoning`'s parser: the message gets `reasoning_content` and `content`,
stream deltas `delta.reasoning_content` and `delta.content`, as vLLM and llama.cpp return them.

With `seed` s, choice j samples with seed s + j (mod 2**64). Without max_tokens /
max_completion_tokens the budget is what fits in the context, capped at 2048.
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
from cupyserve.runtime.reasoning import HarmonyParser, ReasoningDelta, make_parser

from .chat_request import ChatRequest, parse_chat_request
from .dispatch import (GenerationJob, distinct_prompt_tokens, respond_json, respond_stream,
                       usage)
from .generation import ChoiceResult, ChoiceSpec, generated_tokens
from .logprobs_format import TokenNamer, chat_logprobs_content
from .prompt_tokens import chat_prompt_ids, render_chat_messages
from .request_body import read_json_object
from .server_state import ServerState
from .token_budget import resolve_max_tokens


@dataclass(frozen=True)
class ChatContext:
    completion_id: str
    created: int
    model: str
    request: ChatRequest
    job: GenerationJob
    namer: TokenNamer
    reasoning_format: str | None = None  # None: the generated text is the content, as it is

    def envelope(self, obj: str, choices: list[dict]) -> dict:
        return {"id": self.completion_id, "object": obj, "created": self.created,
                "model": self.model, "choices": choices}

    def logprobs_for(self, entries: Sequence) -> dict | None:
        if not self.request.logprobs:
            return None
        return {"content": chat_logprobs_content(self.namer, entries, self.request.top_logprobs or 0)}


async def create_chat_completion(request: Request) -> Response:
    state: ServerState = request.app.state.server
    parsed = parse_chat_request(await read_json_object(request))
    state.check_model(parsed.model)
    state.check_admission()
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    request_id_var.set(completion_id)
    tokenizer = state.engine.tokenizer
    prompt_text = render_chat_messages(tokenizer, parsed.messages, parsed.reasoning_effort)
    prompt_ids = chat_prompt_ids(tokenizer, prompt_text)
    max_tokens = resolve_max_tokens(parsed.max_tokens, None, len(prompt_ids),
                                    state.engine.max_model_len, param=parsed.max_tokens_param,
                                    prompt_param="messages")
    choices = tuple(
        ChoiceSpec(j, 0, prompt_ids,
                   parsed.sampling.to_params(max_tokens=max_tokens, choice=j,
                                             vocab_size=tokenizer.vocab_size,
                                             logprobs=parsed.num_logprobs),
                   f"{completion_id}-{j}")
        for j in range(parsed.sampling.n))
    job = GenerationJob(completion_id, choices)
    log_event("chat_request", completion_id=completion_id, n=parsed.sampling.n, stream=parsed.stream,
              prompt_tokens=len(prompt_ids), max_tokens=max_tokens,
              **({"prompt": prompt_text} if prompts_enabled() else {}))
    context = ChatContext(completion_id, int(time.time()), state.engine.model_name, parsed, job,
                          TokenNamer(tokenizer, parsed.return_tokens_as_token_ids),
                          state.reasoning_format)
    if parsed.stream:
        return await respond_stream(request, state, job, ChatStreamFormatter(context))
    return await respond_json(request, state, job, lambda results: build_response(context, results))


def build_response(context: ChatContext, results: Sequence[ChoiceResult]) -> dict:
    choices = [{"index": spec.index,
                "message": _message(context, result.text),
                "logprobs": context.logprobs_for(result.logprobs),
                "finish_reason": result.finish_reason, "stop_reason": result.stop_reason}
               for spec, result in zip(context.job.choices, results)]
    body = context.envelope("chat.completion", choices)
    body["usage"] = usage(distinct_prompt_tokens(context.job.choices),
                          sum(r.num_generated_tokens for r in results))
    return body


def _message(context: ChatContext, text: str) -> dict:
    if context.reasoning_format is None:
        return {"role": "assistant", "content": text}
    parser = make_parser(context.reasoning_format)
    parts = parser.feed(text) + parser.finish()
    return {"role": "assistant", "content": parts.content, "reasoning_content": parts.reasoning or None}


@dataclass
class ChatStreamFormatter:
    """First chunk of each choice: `delta: {role, content: ""}`; then content (and, with a
    reasoning format, reasoning_content) deltas; the last carries `finish_reason`."""

    context: ChatContext
    started: set[int] = field(default_factory=set)
    generated: dict[int, int] = field(default_factory=dict)
    counted: dict[int, int] = field(default_factory=dict)
    parsers: dict[int, HarmonyParser] = field(default_factory=dict)  # choice index -> reasoning parser

    def _delta(self, index: int, output: StepOutput) -> dict:
        if self.context.reasoning_format is None:
            return {"content": output.text} if output.text or output.logprobs else {}
        if index not in self.parsers:
            self.parsers[index] = make_parser(self.context.reasoning_format)
        parser = self.parsers[index]
        parts: ReasoningDelta = parser.feed(output.text)
        if output.is_finished:
            parts += parser.finish()
        delta = {"reasoning_content": parts.reasoning} if parts.reasoning else {}
        if parts.content or (output.logprobs and not delta):
            delta["content"] = parts.content
        return delta

    def _chunk(self, choice: dict) -> dict:
        chunk = self.context.envelope("chat.completion.chunk", [choice])
        if self.context.request.include_usage:
            chunk["usage"] = None
        return chunk

    def chunks_for(self, index: int, output: StepOutput) -> list[dict]:
        chunks = []
        if index not in self.started:
            self.started.add(index)
            chunks.append(self._chunk({"index": index, "delta": {"role": "assistant", "content": ""},
                                       "logprobs": None, "finish_reason": None}))
        self.counted[index] = self.counted.get(index, 0) + len(output.token_ids)
        self.generated[index] = generated_tokens(output, self.counted[index])
        delta = self._delta(index, output)
        if delta or output.logprobs or output.is_finished:
            chunks.append(self._chunk({
                "index": index, "delta": delta,
                "logprobs": self.context.logprobs_for(output.logprobs) if output.logprobs else None,
                "finish_reason": output.finish_reason,
                **({"stop_reason": output.stop_reason} if output.is_finished else {})}))
        return chunks

    def closing_chunks(self) -> list[dict]:
        if not self.context.request.include_usage:
            return []
        chunk = self.context.envelope("chat.completion.chunk", [])
        chunk["usage"] = usage(distinct_prompt_tokens(self.context.job.choices),
                               sum(self.generated.values()))
        return [chunk]
