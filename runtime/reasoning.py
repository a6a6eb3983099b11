"""Reasoning output: a model's generated text split into `reasoning_content` and `content`, as
llama.cpp (`--reasoning-format`) and vLLM (reasoning parsers) return it.

Harmony (gpt-oss) is the one format today. The model writes messages framed by control tokens:

    <|channel|>analysis<|message|>...thinking...<|end|><|start|>assistant<|channel|>final<|message|>...answer...<|return|>

(the prompt already ends with `<|start|>assistant`, so the first header is just `<|channel|>NAME`).
The `analysis` channel is reasoning; `final` and every other channel (`commentary` preambles) are
content. Headers (role, `to=` recipient, `<|constrain|>` format) and every framing token are
consumed, so no control token reaches either field. Generated text that carries no framing at all
is content, so a model that ignores the format still answers.

Which models: `reasoning_format(chat_template, vocabulary)` is "harmony" when the chat template or
the vocabulary has the `<|channel|>` token (only the harmony format defines it), else None (the
text is returned as content, untouched). The detokenizer must keep the framing tokens in the text
even with `skip_special_tokens`: the GGUF vocabulary rules (`runtime.gguf_vocab`, as llama.cpp)
make them user-defined tokens, which are always rendered, while `<|return|>` / `<|call|>` end
generation and never reach the text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

HARMONY = "harmony"

START = "<|start|>"
END = "<|end|>"
MESSAGE = "<|message|>"
CHANNEL = "<|channel|>"
CONSTRAIN = "<|constrain|>"
RETURN = "<|return|>"
CALL = "<|call|>"
HARMONY_TOKENS = (START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL)
_MESSAGE_ENDS = frozenset({END, RETURN, CALL})
_LONGEST_TOKEN = max(len(t) for t in HARMONY_TOKENS)
REASONING_CHANNEL = "analysis"
FINAL_CHANNEL = "final"


def make_parser(format_name: str) -> "HarmonyParser":
    """A fresh parser for one sequence of the given format (as `reasoning_format` names it)."""
    if format_name != HARMONY:
        raise ValueError(f"unknown reasoning format {format_name!r}; known: {HARMONY}")
    return HarmonyParser()


def reasoning_format(chat_template: str | None, vocabulary: Iterable[str] = ()) -> str | None:
    """"harmony" when the template or the vocabulary has `<|channel|>`, else None."""
    if chat_template and CHANNEL in chat_template:
        return HARMONY
    return HARMONY if any(token == CHANNEL for token in vocabulary) else None


@dataclass(frozen=True)
class ReasoningDelta:
    """Text added to each field by one piece of generated text."""

    reasoning: str = ""
    content: str = ""

    def __add__(self, other: "ReasoningDelta") -> "ReasoningDelta":
        return ReasoningDelta(self.reasoning + other.reasoning, self.content + other.content)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content)


class HarmonyParser:
    """Streaming harmony parser for one generated sequence.

    Contract: `feed` takes the generated text in pieces of any size, split anywhere (inside a
    control token, a channel name or a UTF-8 string), and returns what each field gained; `finish`
    releases text still held back. The sum of all deltas does not depend on how the text was
    split. Text that might be the start of a control token ("<|chan") is held back until it is
    decided; at `finish` it is ordinary text when inside a message body and dropped elsewhere
    (there it can only be a cut-off control token). A message cut off in its header adds nothing.
    """

    def __init__(self) -> None:
        self._held = ""  # a tail that may still become a control token
        self._state = "start"  # start | header | body | between
        self._header = ""  # header text so far, framing tokens kept as markers
        self._channel = FINAL_CHANNEL
        self._reasoning: list[str] = []
        self._content: list[str] = []

    def feed(self, text: str) -> ReasoningDelta:
        buffer = self._held + text
        self._held = ""
        while buffer:
            position, token = _first_token(buffer)
            if token is None:
                keep = _partial_token_length(buffer)
                self._on_text(buffer[: len(buffer) - keep])
                self._held = buffer[len(buffer) - keep :]
                break
            self._on_text(buffer[:position])
            self._on_token(token)
            buffer = buffer[position + len(token) :]
        return self._take()

    def finish(self) -> ReasoningDelta:
        held, self._held = self._held, ""
        if self._state == "body":
            self._on_text(held)  # "a <" at the end of a message is text
        # Elsewhere a held tail can only be a control token cut off by max_tokens: dropped.
        return self._take()

    # -- state machine --------------------------------------------------------------------------

    def _on_text(self, text: str) -> None:
        if not text:
            return
        if self._state == "header":
            self._header += text
            return
        if self._state in ("start", "between"):
            # Text outside any message: the model is not using the format; show it as the answer.
            self._state, self._channel = "body", FINAL_CHANNEL
        (self._reasoning if self._channel == REASONING_CHANNEL else self._content).append(text)

    def _on_token(self, token: str) -> None:
        if token in _MESSAGE_ENDS:
            self._state = "between"
        elif token == START:
            self._state, self._header = "header", ""
        elif token == CHANNEL:
            if self._state != "header":  # a header that skipped <|start|> (the first one does)
                self._state, self._header = "header", ""
            self._header += CHANNEL
        elif token == CONSTRAIN:
            if self._state == "header":
                self._header += CONSTRAIN
        elif token == MESSAGE:
            if self._state == "header":
                self._channel = _channel_of(self._header)
            elif self._state != "body":
                self._channel = FINAL_CHANNEL
            self._state = "body"

    def _take(self) -> ReasoningDelta:
        delta = ReasoningDelta("".join(self._reasoning), "".join(self._content))
        self._reasoning.clear()
        self._content.clear()
        return delta


def _channel_of(header: str) -> str:
    """The channel a header names (`assistant<|channel|>analysis`, `<|channel|>commentary
    to=functions.f <|constrain|>json`): the first word after the last `<|channel|>`; final when
    the header names none."""
    if CHANNEL not in header:
        return FINAL_CHANNEL
    words = header.rsplit(CHANNEL, 1)[1].split(CONSTRAIN, 1)[0].split()
    return words[0] if words else FINAL_CHANNEL


def _first_token(text: str) -> tuple[int, str | None]:
    """Position and text of the earliest control token in `text` (no token is a prefix of
    another, so the earliest position decides)."""
    best, found = len(text), None
    if "<|" not in text:
        return best, found
    for token in HARMONY_TOKENS:
        position = text.find(token, 0, best + len(token))
        if 0 <= position < best:
            best, found = position, token
    return best, found


def _partial_token_length(text: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a control token."""
    start = text.find("<", max(0, len(text) - _LONGEST_TOKEN + 1))
    while start >= 0:
        tail = text[start:]
        if any(token.startswith(tail) for token in HARMONY_TOKENS):
            return len(tail)
        start = text.find("<", start + 1)
    return 0
