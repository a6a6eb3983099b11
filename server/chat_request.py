"""The /v1/chat/completions request body, parsed and checked (types and server limits)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .errors import invalid_request
from .request_fields import (check_range, get_bool, get_int, get_object, get_str,
                             get_stream_options, reject_unsupported)
from .sampling_fields import SamplingFields, parse_sampling_fields
from .token_budget import MAX_PROMPT_CHARS

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_TOP_LOGPROBS = 20
MAX_MESSAGES = 1024
REASONING_EFFORTS = ("low", "medium", "high")


@dataclass(frozen=True)
class ChatMessage:
    """A message as the chat template sees it: text content only (parts joined by newlines)."""

    role: str
    content: str
    name: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}")

    def as_template_input(self) -> dict:
        message = {"role": self.role, "content": self.content}
        if self.name is not None:
            message["name"] = self.name
        return message


@dataclass(frozen=True)
class ChatRequest:
    model: str | None
    messages: tuple[ChatMessage, ...]
    sampling: SamplingFields
    max_tokens: int | None  # None: as much as fits (capped)
    max_tokens_param: str = "max_tokens"  # the field the client used, for error messages
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int | None = None
    return_tokens_as_token_ids: bool = False
    reasoning_effort: str | None = None  # passed to the chat template; None: the template's default

    def __post_init__(self) -> None:
        check_range(1 <= len(self.messages) <= MAX_MESSAGES, "messages",
                    f"must hold between 1 and {MAX_MESSAGES} messages")
        total_chars = sum(len(m.content) for m in self.messages)
        check_range(total_chars <= MAX_PROMPT_CHARS, "messages",
                    f"content has {total_chars} characters; the limit is {MAX_PROMPT_CHARS}")
        if self.top_logprobs is not None:
            check_range(0 <= self.top_logprobs <= MAX_TOP_LOGPROBS, "top_logprobs",
                        f"must be between 0 and {MAX_TOP_LOGPROBS}")
            check_range(self.logprobs, "top_logprobs", "requires 'logprobs' to be true")
        check_range(self.reasoning_effort is None or self.reasoning_effort in REASONING_EFFORTS,
                    "reasoning_effort", f"must be one of {', '.join(REASONING_EFFORTS)}, "
                                        f"got {self.reasoning_effort!r}")

    @property
    def num_logprobs(self) -> int | None:
        """What SamplingParams.logprobs gets: None when logprobs are off."""
        return (self.top_logprobs or 0) if self.logprobs else None


def parse_chat_request(body: Mapping[str, Any]) -> ChatRequest:
    if body.get("tools"):
        reject_unsupported(body, "tools")
    response_format = get_object(body, "response_format")
    if response_format is not None and response_format.get("type", "text") != "text":
        raise invalid_request("only response_format {'type': 'text'} is supported",
                              param="response_format", code="unsupported_parameter")
    stream, include_usage = get_stream_options(body)
    max_completion_tokens = get_int(body, "max_completion_tokens", None)
    return ChatRequest(
        model=get_str(body, "model", None),
        messages=parse_messages(body.get("messages")),
        sampling=parse_sampling_fields(body),
        max_tokens=max_completion_tokens if max_completion_tokens is not None
        else get_int(body, "max_tokens", None),
        max_tokens_param="max_completion_tokens" if max_completion_tokens is not None else "max_tokens",
        stream=stream,
        include_usage=include_usage,
        logprobs=get_bool(body, "logprobs", False),
        top_logprobs=get_int(body, "top_logprobs", None),
        return_tokens_as_token_ids=get_bool(body, "return_tokens_as_token_ids", False),
        reasoning_effort=get_str(body, "reasoning_effort", None),
    )


def parse_messages(value: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise invalid_request("'messages' must be a non-empty list of messages", param="messages")
    return tuple(_parse_message(i, m) for i, m in enumerate(value))


def _parse_message(index: int, message: Any) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise invalid_request(f"'{where}' must be an object", param=where)
    role = message.get("role")
    if role not in ROLES:
        raise invalid_request(f"'{where}.role' must be one of {', '.join(sorted(ROLES))}, got {role!r}",
                              param=f"{where}.role")
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise invalid_request(f"'{where}.name' must be a string", param=f"{where}.name")
    content = message.get("content")
    if content is None and role == "assistant":
        content = ""  # an assistant turn that only carried tool calls
    return ChatMessage(role=role, content=_content_text(content, where), name=name)


def _content_text(content: Any, where: str) -> str:
    """A string, or a list of text parts joined by newlines (as vLLM does); nothing else."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise invalid_request(f"'{where}.content[{j}]' must be a text part "
                                      "({'type': 'text', 'text': ...}); only text is supported",
                                      param=f"{where}.content")
        return "\n".join(texts)
    raise invalid_request(f"'{where}.content' must be a string or a list of text parts",
                          param=f"{where}.content")
