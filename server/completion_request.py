"""The /v1/completions request body, parsed and checked (types and server limits)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .errors import invalid_request
from .request_fields import (check_range, get_bool, get_int, get_str, get_stream_options,
                             reject_unsupported)
from .sampling_fields import SamplingFields, parse_sampling_fields
from .token_budget import check_prompt_chars

MAX_PROMPTS = 32  # prompts in one batched request
MAX_CHOICES = 64  # prompts x n
MAX_COMPLETION_LOGPROBS = 5
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy endpoint


@dataclass(frozen=True)
class PromptInput:
    """One prompt: text to tokenize, or token ids as sent (exactly one is set)."""

    text: str | None = None
    token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.token_ids is None):
            raise ValueError("PromptInput needs exactly one of text or token_ids")


@dataclass(frozen=True)
class CompletionRequest:
    model: str | None
    prompts: tuple[PromptInput, ...]
    sampling: SamplingFields
    max_tokens: int | None  # None: DEFAULT_MAX_TOKENS, lowered to what fits
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: int | None = None
    return_tokens_as_token_ids: bool = False

    def __post_init__(self) -> None:
        check_range(1 <= len(self.prompts) <= MAX_PROMPTS, "prompt",
                    f"must hold between 1 and {MAX_PROMPTS} prompts")
        check_range(len(self.prompts) * self.sampling.n <= MAX_CHOICES, "n",
                    f"times the number of prompts must be at most {MAX_CHOICES}")
        check_range(self.logprobs is None or 0 <= self.logprobs <= MAX_COMPLETION_LOGPROBS,
                    "logprobs", f"must be between 0 and {MAX_COMPLETION_LOGPROBS}")


def parse_completion_request(body: Mapping[str, Any]) -> CompletionRequest:
    reject_unsupported(body, "suffix", (None, ""))
    reject_unsupported(body, "best_of", (None, 1))
    stream, include_usage = get_stream_options(body)
    return CompletionRequest(
        model=get_str(body, "model", None),
        prompts=_parse_prompts(body.get("prompt")),
        sampling=parse_sampling_fields(body),
        max_tokens=get_int(body, "max_tokens", None),
        stream=stream,
        include_usage=include_usage,
        echo=get_bool(body, "echo", False),
        logprobs=get_int(body, "logprobs", None),
        return_tokens_as_token_ids=get_bool(body, "return_tokens_as_token_ids", False),
    )


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_prompts(value: Any) -> tuple[PromptInput, ...]:
    """string | [string] | [int] | [[int]] -> one PromptInput per prompt."""
    if value is None:
        raise invalid_request("'prompt' is required", param="prompt")
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(_is_token_id(v) for v in value):
        items = [value]  # one prompt given as token ids
    elif isinstance(value, list) and value:
        items = value
    else:
        raise invalid_request("'prompt' must be a string, a list of strings, a list of token ids or "
                              "a list of lists of token ids, and must not be empty", param="prompt")
    prompts = []
    for item in items:
        if isinstance(item, str):
            check_prompt_chars(item, "prompt")
            prompts.append(PromptInput(text=item))
        elif isinstance(item, list) and item and all(_is_token_id(v) for v in item):
            prompts.append(PromptInput(token_ids=tuple(item)))
        else:
            raise invalid_request("each prompt must be a string or a non-empty list of token ids",
                                  param="prompt")
    return tuple(prompts)
