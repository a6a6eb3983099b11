"""A scripted in-process engine implementing EngineClient, for HTTP-layer unit tests only.

Tokens are characters: id = ord(c) + 3 for code points below 253; 0/1/2 are <s>, </s>, <unk>.
The reply to any prompt is `FakeEngine.reply` (or `reply_for_seed(seed)` when sampled with a
seed), emitted one character per step, cut at max_tokens (finish "length") or a single-character stop string.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from cupyserve.runtime.engine_protocol import RequestRejected
from cupyserve.runtime.outputs import EngineError, StepOutput, TokenLogprob
from cupyserve.runtime.sampling_params import SamplingParams

SPECIALS = ["<s>", "</s>", "<unk>"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


class FakeTokenizer:
    bos_id = 0
    eos_ids = (1,)
    add_bos = True
    vocab_size = 256
    kind = "fake-chars"
    chat_template = CHAT_TEMPLATE

    def encode(self, text: str, add_special_tokens: bool = True, parse_special: bool = True) -> list[int]:
        ids = [0] if add_special_tokens and self.add_bos else []
        i = 0
        while i < len(text):
            special = next((s for s in SPECIALS if parse_special and text.startswith(s, i)), None)
            if special is not None:
                ids.append(SPECIALS.index(special))
                i += len(special)
                continue
            code = ord(text[i])
            ids.append(code + 3 if code + 3 < self.vocab_size else 2)
            i += 1
        return ids

    def token_text(self, token_id: int) -> str:
        return SPECIALS[token_id] if token_id < 3 else chr(token_id - 3)

    def token_bytes(self, token_id: int) -> bytes:
        return self.token_text(token_id).encode()

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join("" if (t < 3 and skip_special_tokens) else self.token_text(t) for t in ids)


@dataclass
class Call:
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str
    correlation_id: str | None


@dataclass
class FakeEngine:
    model_name: str = "fake-model"
    max_model_len: int = 64
    reply: str = "hello world"
    step_delay_s: float = 0.0
    reject: EngineError | None = None  # raised as RequestRejected on first iteration
    fail_after: int | None = None  # finish with an engine error after this many tokens
    raise_after: int | None = None  # raise a plain exception after this many tokens
    accepting: bool = True
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    calls: list[Call] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)

    @property
    def is_accepting(self) -> bool:
        return self.accepting

    def health(self) -> dict[str, Any]:
        return {"family": "fake", "device": "cpu", "kv_blocks_total": 10, "kv_blocks_free": 10,
                "context_length": self.max_model_len, "status": "engine-says-ok"}

    def abort(self, request_id: str) -> bool:
        self.aborted.append(request_id)
        return True

    @staticmethod
    def reply_for_seed(seed: int) -> str:
        return f"seeded {seed % 1000} text"

    def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str,
                 correlation_id: str | None = None) -> AsyncIterator[StepOutput]:
        self.calls.append(Call(list(prompt_ids), params, request_id, correlation_id))
        return self._run(list(prompt_ids), params, request_id)

    def _logprob(self, token_id: int, n: int) -> TokenLogprob:
        top = tuple((token_id + k) % self.tokenizer.vocab_size for k in range(n))
        return TokenLogprob(token_id, -0.25, tuple((t, -0.25 - k) for k, t in enumerate(top)))

    async def _run(self, prompt_ids: list[int], params: SamplingParams,
                   request_id: str) -> AsyncIterator[StepOutput]:
        try:
            if self.reject is not None:
                raise RequestRejected(self.reject)
            reply = self.reply_for_seed(params.seed) if params.seed is not None and params.temperature > 0 \
                else self.reply
            emitted = 0
            prompt_lp = None
            if params.prompt_logprobs is not None:
                prompt_lp = [None] + [self._logprob(t, params.prompt_logprobs) for t in prompt_ids[1:]]
            for ch in reply:
                await asyncio.sleep(self.step_delay_s)
                if request_id in self.aborted:
                    yield StepOutput(request_id, finish_reason="cancelled",
                                     num_prompt_tokens=len(prompt_ids), num_generated_tokens=emitted)
                    return
                if self.fail_after is not None and emitted >= self.fail_after:
                    yield StepOutput(request_id, finish_reason="error",
                                     error=EngineError("out of device memory", "vram_oom", 500))
                    return
                if self.raise_after is not None and emitted >= self.raise_after:
                    raise RuntimeError("boom")
                token_id = self.tokenizer.encode(ch, add_special_tokens=False)[0]
                emitted += 1
                piece, finish, stop_reason = ch, None, None
                if ch in params.stop:  # single-character stops are all these tests need
                    piece, finish, stop_reason = "", "stop", ch
                if finish is None and emitted >= params.max_tokens:
                    finish = "length"
                yield StepOutput(
                    request_id, token_ids=[token_id], text=piece,
                    logprobs=[self._logprob(token_id, params.logprobs)] if params.logprobs is not None else [],
                    prompt_logprobs=prompt_lp if emitted == 1 else None,
                    finish_reason=finish, stop_reason=stop_reason,
                    num_prompt_tokens=len(prompt_ids), num_generated_tokens=emitted)
                if finish:
                    return
            yield StepOutput(request_id, token_ids=[1], finish_reason="stop", stop_reason=None,
                             num_prompt_tokens=len(prompt_ids), num_generated_tokens=emitted + 1)
        finally:
            self.closed.append(request_id)


def client_for(engine: FakeEngine | None = None, **app_kwargs: Any):
    """A Starlette TestClient around create_app(engine) (a fresh FakeEngine by default)."""
    from starlette.testclient import TestClient

    from cupyserve.server.app import create_app

    return TestClient(create_app(engine or FakeEngine(), **app_kwargs), raise_server_exceptions=False)


def sse_payloads(raw: str) -> list[str]:
    """The `data:` payloads of an SSE body, checking the framing (each event ends in a blank line)."""
    assert raw.endswith("\n\n"), raw[-50:]
    events = raw.split("\n\n")[:-1]
    payloads = []
    for event in events:
        assert event.startswith("data: "), event
        payloads.append(event[len("data: "):])
    return payloads


def assert_openai_error(response, status: int, param: str | None = "__any__") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param != "__any__":
        assert error["param"] == param, error
    return error
