"""Streaming ids -> text: whole UTF-8 characters only, and stop strings held back until decided.

A byte-level token may end in the middle of a UTF-8 character (an emoji is often 2-4 tokens), so
`IncrementalDetokenizer` keeps the incomplete bytes until the character is complete. A stop
string may span several pieces, so `StopStringMatcher` holds back any tail that could still grow
into one; the text before a stop is emitted, the stop itself never is (OpenAI semantics).
"""
from __future__ import annotations

import codecs
from typing import Sequence

from .tokenizer import Tokenizer


class IncrementalDetokenizer:
    """Turns one token id at a time into text.

    Contract: the concatenation of every `push` result and the final `flush` equals
    `tokenizer.decode(ids, skip_special_tokens)` for the same ids; no piece ends in (or holds) a
    replacement character for a character that was merely split across tokens. Bytes that can
    never become valid UTF-8 are replaced as soon as that is certain, exactly as `decode` does.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Text completed by this token ("" while a character is still incomplete)."""
        if self.skip_special_tokens and self.tokenizer.is_special(token_id):
            return ""
        return self._decoder.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """What is still buffered at the end of the stream; an incomplete character becomes U+FFFD."""
        return self._decoder.decode(b"", final=True)

    @property
    def num_pending_bytes(self) -> int:
        """Bytes of an incomplete character waiting for the next token."""
        pending, _ = self._decoder.getstate()
        return len(pending)


class StopStringMatcher:
    """Finds stop strings in streamed text.

    `feed(text)` returns `(emit, matched)`: `emit` is text that can no longer be part of a stop
    string; a tail that is a prefix of some stop is held back. When a stop completes, `emit` is
    the text before it and `matched` the stop string; the matcher is then finished and must not
    be fed again. If several stops could match, the one that completes first in the stream wins
    (ties: the one starting earlier), so the result does not depend on how text is chunked.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if isinstance(stops, str):
            raise TypeError("stops must be a sequence of strings, not a single string")
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError("stop strings must be non-empty strings")
        self.stops: tuple[str, ...] = tuple(dict.fromkeys(stops))
        self._max_hold = max((len(s) for s in self.stops), default=1) - 1
        self._held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> tuple[str, str | None]:
        if self.matched is not None:
            raise RuntimeError(f"stop string {self.matched!r} already matched; the stream is over")
        if not self.stops:
            return text, None
        buffer = self._held + text
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self.stops:
            start = buffer.find(stop)
            if start >= 0:
                candidate = (start + len(stop), start, stop)
                if best is None or candidate < best:
                    best = candidate
        if best is not None:
            _, start, stop = best
            self._held = ""
            self.matched = stop
            return buffer[:start], stop
        hold = self._held_length(buffer)
        self._held = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold], None

    def flush(self) -> str:
        """Release the held tail at the end of the stream (no stop matched)."""
        held, self._held = self._held, ""
        return held

    @property
    def held(self) -> str:
        return self._held

    def _held_length(self, buffer: str) -> int:
        """Length of the longest tail of `buffer` that is a proper prefix of some stop string."""
        for length in range(min(len(buffer), self._max_hold), 0, -1):
            tail = buffer[len(buffer) - length :]
            if any(stop.startswith(tail) for stop in self.stops):
                return length
        return 0
