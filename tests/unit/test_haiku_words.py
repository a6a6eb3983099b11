"""The haiku acceptance test's helpers: minutes spelled out, and finding them in a haiku."""
from __future__ import annotations

import pytest

from haiku import (MINUTE_ENV, HaikuResult, contains_words, current_minute, haiku_request_text,
                   has_words_of_its_own, minute_in_words)


@pytest.mark.parametrize("minute,words", [
    (0, "zero"), (1, "one"), (9, "nine"), (10, "ten"), (11, "eleven"), (12, "twelve"),
    (13, "thirteen"), (15, "fifteen"), (18, "eighteen"), (19, "nineteen"), (20, "twenty"),
    (21, "twenty-one"), (30, "thirty"), (34, "thirty-four"), (40, "forty"), (42, "forty-two"),
    (50, "fifty"), (58, "fifty-eight"), (59, "fifty-nine"),
])
def test_minute_in_words(minute, words):
    assert minute_in_words(minute) == words


def test_every_minute_has_distinct_words():
    words = [minute_in_words(m) for m in range(60)]
    assert len(set(words)) == 60 and all(w.replace("-", "").isalpha() for w in words)


@pytest.mark.parametrize("bad", [-1, 60, 4.0, "4", True])
def test_minute_out_of_range_is_refused(bad):
    with pytest.raises(ValueError):
        minute_in_words(bad)


@pytest.mark.parametrize("text,words,found", [
    ("Forty-two leaves fall", "forty-two", True),
    ("at forty two the light", "forty-two", True),
    ("FORTY\u2013TWO bells", "forty-two", True),
    ("fortytwo", "forty-two", True),
    ("forty-twos", "forty-two", False),
    ("forty-three", "forty-two", False),
    ("twenty-one geese", "one", False),
    ("someone waits", "one", False),
    ("one lone crow", "one", True),
    ("Seven.", "seven", True),
    ("", "seven", False),
])
def test_contains_words(text, words, found):
    assert contains_words(text, words) is found


def test_minute_is_injectable(monkeypatch):
    monkeypatch.setenv(MINUTE_ENV, "37")
    assert current_minute() == 37
    monkeypatch.setenv(MINUTE_ENV, "61")
    with pytest.raises(ValueError):
        current_minute()
    monkeypatch.delenv(MINUTE_ENV)
    assert 0 <= current_minute() <= 59


def test_an_echo_of_the_request_does_not_count():
    echo = haiku_request_text("forty-two") + " model\nWrite a haiku"
    assert contains_words(echo, "forty-two") and not has_words_of_its_own(echo, "forty-two")
    assert not has_words_of_its_own('Leaves fall: "Forty-Two" they say', "forty-two")
    assert not has_words_of_its_own('Write a haiku. It must contain the word "forty-two', "forty-two")
    assert has_words_of_its_own(echo + "\nforty-two geese fly south", "forty-two")
    result = HaikuResult(minute=42, words="forty-two", text=echo, finish_reason="length",
                         completion_tokens=48)
    assert not result.has_words


def test_the_request_names_no_minute_but_its_own():
    for minute in range(60):
        words = minute_in_words(minute)
        text = haiku_request_text(words).replace(f'"{words}"', "")
        assert not any(contains_words(text, minute_in_words(m)) for m in range(60)), minute
