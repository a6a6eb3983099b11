"""Prompt and completion length limits (DESIGN.md): what fits in the context, and max_tokens.

A prompt is at most `MAX_PROMPT_CHARS` characters and must leave room for one generated token.
`max_tokens` is 1..min(`MAX_TOKENS_CAP`, context - prompt tokens). When the client sends no
max_tokens, the endpoint's default is used but quietly lowered to what fits, as OpenAI does.
"""
from __future__ import annotations

from .errors import invalid_request

MAX_PROMPT_CHARS = 32768
MAX_TOKENS_CAP = 2048


def check_prompt_chars(text: str, param: str) -> None:
    if len(text) > MAX_PROMPT_CHARS:
        raise invalid_request(f"'{param}' has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}",
                              param=param, code="prompt_too_long")


def resolve_max_tokens(requested: int | None, default: int | None, prompt_tokens: int,
                       context: int, param: str = "max_tokens", prompt_param: str = "prompt") -> int:
    """The completion budget for one prompt, or a 400 saying which limit was broken.

    `default=None` means "as much as fits" (the chat endpoint's default).
    """
    room = context - prompt_tokens
    if room < 1:
        raise invalid_request(
            f"This model's maximum context length is {context} tokens, however your prompt has "
            f"{prompt_tokens} tokens, which leaves no room for a completion. Please shorten the "
            f"prompt.", param=prompt_param,
            code="context_length_exceeded")
    limit = min(MAX_TOKENS_CAP, room)
    if requested is None:
        return limit if default is None else min(default, limit)
    if requested < 1:
        raise invalid_request(f"'{param}' must be >= 1, got {requested}", param=param)
    if requested > MAX_TOKENS_CAP:
        raise invalid_request(f"'{param}' must be <= {MAX_TOKENS_CAP}, got {requested}", param=param)
    if requested > room:
        raise invalid_request(
            f"This model's maximum context length is {context} tokens, however you requested "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in your prompt; {requested} for "
            f"the completion). Please reduce the prompt or the completion length.",
            param=param, code="context_length_exceeded")
    return requested
