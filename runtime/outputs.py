"""What the engine hands back to the server for each request, step by step."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenLogprob:
    """Raw log-softmax of the model's logits (before any sampler step) for one position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # [(token_id, logprob)] best first


@dataclass(frozen=True)
class EngineError:
    """A failure confined to one request. `status` is the HTTP status the server answers with."""

    message: str
    code: str  # e.g. "vram_oom", "context_length_exceeded", "internal_error"
    status: int = 500
    type: str = "server_error"


@dataclass
class StepOutput:
    """A delta for one request: the tokens and text produced since the previous output.

    `text` never ends inside a UTF-8 character and never contains a held-back tail that may still
    become a stop string. The last output of a request has `finish_reason` set (stop, length,
    cancelled, error); on error, `error` says why.
    """

    request_id: str
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None  # first output only, when asked
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # matched stop string or stop token id
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    num_cached_tokens: int = 0
    error: EngineError | None = None

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None
