"""The haiku acceptance test: the real server, with the real default model, writes a haiku that
should contain the current minute in words (injectable: $CUPYSERVE_HAIKU_MINUTE).

Hard checks (the server really generated): the reply is text, usage.completion_tokens > 0, the
/metrics generation-token counter moved by exactly that many tokens, and a second run at another
minute gives a different haiku. The word check is the model's part: a 135M model often misses it,
so a miss is reported (logged, recorded as a property, and the test xfails with the haiku text),
never hidden. The pass rate over 20 minutes per catalog model is benchmarks/haiku_pass_rate.py's
job (docs/haiku.md)."""
from __future__ import annotations

import logging

import pytest

from haiku import HaikuResult, ask_haiku, current_minute

pytestmark = pytest.mark.e2e

MAX_TOKENS = 40  # a haiku is ~20 tokens; keeps this test to a few seconds on a 2-core CPU
log = logging.getLogger(__name__)


def _check_really_generated(result: HaikuResult) -> None:
    assert result.text, f"empty reply: {result}"
    assert result.completion_tokens > 0
    assert result.counter_delta == result.completion_tokens, (
        f"usage says {result.completion_tokens} tokens, /metrics moved by {result.counter_delta}")


def test_haiku_contains_the_minute_in_words(http, server, record_property):
    minute = current_minute()
    other_minute = (minute + 17) % 60
    results = [ask_haiku(http, server.model, m, MAX_TOKENS) for m in (minute, other_minute)]
    for result in results:
        log.warning("haiku %s", result.describe())
        print(f"haiku {result.describe()}")
        _check_really_generated(result)
    record_property("haiku", results[0].text)
    record_property("haiku_has_word", results[0].has_words)
    assert results[0].text != results[1].text, "two minutes, one haiku: the reply ignores the prompt"
    missed = [r for r in results if not r.has_words]
    if missed:
        pytest.xfail(f"{server.model} wrote {len(missed)} of 2 haiku(s) without the minute's words "
                     f"(small models often do; pass rates in docs/haiku.md): "
                     + " | ".join(r.describe() for r in missed))
