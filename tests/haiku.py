"""The haiku acceptance check (the seed's anti-cheat test), shared by tests/e2e/test_e2e_haiku.py,
tests/unit/test_haiku_words.py and benchmarks/haiku_pass_rate.py.

The served model is asked for a haiku containing the current minute spelled out in words
("forty-two"). A server that returned canned text could not know the minute; one that did not
really run the model would not move the generation-token counter by the number of tokens its
usage reports. The minute is injectable (`CUPYSERVE_HAIKU_MINUTE`, or a parameter) so that no run
waits for the clock and a sweep can cover many minutes.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import re
from dataclasses import dataclass

import httpx

MINUTE_ENV = "CUPYSERVE_HAIKU_MINUTE"
GENERATION_COUNTER = "cupyserve:generation_tokens_total"

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen")
_TENS = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty"}


def minute_in_words(minute: int) -> str:
    """0..59 as English words, compound numbers hyphenated: 7 -> "seven", 42 -> "forty-two"."""
    if not isinstance(minute, int) or isinstance(minute, bool) or not 0 <= minute <= 59:
        raise ValueError(f"a minute is an integer in 0..59, got {minute!r}")
    if minute < 20:
        return _ONES[minute]
    tens, ones = divmod(minute, 10)
    return _TENS[tens] if ones == 0 else f"{_TENS[tens]}-{_ONES[ones]}"


def current_minute() -> int:
    """$CUPYSERVE_HAIKU_MINUTE when set (0..59), else the wall clock's minute."""
    override = os.environ.get(MINUTE_ENV)
    if override is None or override == "":
        return datetime.datetime.now().minute
    minute = int(override)
    minute_in_words(minute)  # validates the range
    return minute


def contains_words(text: str, words: str) -> bool:
    """Whether `text` holds `words` as whole words, ignoring case; the hyphen of a compound may
    also be written as a space, an en dash or nothing ("Forty two", "forty–two", "fortytwo")."""
    parts = [re.escape(p) for p in words.lower().split("-")]
    # Not part of a longer word or compound: "one" is not found in "someone" or "twenty-one".
    pattern = r"(?<![\w-])" + r"[\s\-\u2010\u2011\u2013]?".join(parts) + r"(?![\w-])"
    return re.search(pattern, text.lower()) is not None


def haiku_request_text(words: str) -> str:
    # No number words of its own ("three short lines" would hand minute 3 its word in any echo).
    return (f'Write a haiku about the time of day. It must contain the word "{words}". '
            f'Reply with the haiku only.')


def haiku_messages(words: str) -> list[dict]:
    return [{"role": "user", "content": haiku_request_text(words)}]


def has_words_of_its_own(reply: str, words: str) -> bool:
    """Whether the reply holds the words outside any echo of the request: a base model that
    repeats the prompt (`...must contain the word "forty-two"...`) has not written them. The
    request text and the words in quotes (a closing quote may be cut off by max_tokens) are
    removed, ignoring case, before looking."""
    text = reply.lower()
    for echo in (haiku_request_text(words).lower(), f'"{words.lower()}"', f'"{words.lower()}'):
        text = text.replace(echo, " ")
    return contains_words(text, words)


@dataclass(frozen=True)
class HaikuResult:
    minute: int
    words: str
    text: str
    finish_reason: str
    completion_tokens: int
    counter_delta: float | None = None  # how far the generation-token counter moved (if read)

    @property
    def has_words(self) -> bool:
        return has_words_of_its_own(self.text, self.words)

    def describe(self) -> str:
        verdict = "contains" if self.has_words else "MISSES"
        return (f"minute {self.minute} ({self.words!r}): {verdict} the word; "
                f"{self.completion_tokens} tokens, finish {self.finish_reason}; haiku: {self.text!r}")


def generation_counter(client: httpx.Client) -> float:
    """The server's generation-token counter, read from /metrics."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(GENERATION_COUNTER + " "):
            return float(line.split()[1])
    raise AssertionError(f"/metrics has no {GENERATION_COUNTER}")


def request_haiku(client: httpx.Client, model: str, minute: int, max_tokens: int = 48,
                  temperature: float = 0.7) -> HaikuResult:
    """One chat completion asking for the haiku of `minute`, sampled with the minute as its seed.
    (The sampled text can still differ between setups: BLAS thread counts change the low bits of
    the logits, which a temperature-0.7 draw may notice.)"""
    words = minute_in_words(minute)
    response = client.post("/v1/chat/completions", json={
        "model": model, "messages": haiku_messages(words), "max_tokens": max_tokens,
        "temperature": temperature, "seed": minute})
    response.raise_for_status()
    body = response.json()
    choice = body["choices"][0]
    return HaikuResult(minute=minute, words=words, text=choice["message"]["content"].strip(),
                       finish_reason=choice["finish_reason"],
                       completion_tokens=body["usage"]["completion_tokens"])


def ask_haiku(client: httpx.Client, model: str, minute: int, max_tokens: int = 48,
              temperature: float = 0.7) -> HaikuResult:
    """`request_haiku` alone on the server, with the generation counter read before and after."""
    before = generation_counter(client)
    result = request_haiku(client, model, minute, max_tokens, temperature)
    return dataclasses.replace(result, counter_delta=generation_counter(client) - before)
