"""The harmony reasoning parser: analysis -> reasoning_content, other channels -> content, the
same result however the text is split into stream pieces, no control token in either field."""
from __future__ import annotations

import random

import pytest

from cupyserve.runtime.reasoning import (HARMONY, HARMONY_TOKENS, HarmonyParser, ReasoningDelta,
                                         reasoning_format)

FULL = ("<|channel|>analysis<|message|>The user wants 2+2. That is 4.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>2 + 2 = **4**.")
CASES = {
    # name: (generated text, expected reasoning, expected content)
    "analysis then final": (FULL, "The user wants 2+2. That is 4.", "2 + 2 = **4**."),
    "final ended by return": (FULL + "<|return|>", "The user wants 2+2. That is 4.", "2 + 2 = **4**."),
    "cut inside analysis": ("<|channel|>analysis<|message|>Let me think about thi",
                            "Let me think about thi", ""),
    "cut after analysis ends": ("<|channel|>analysis<|message|>Thinking.<|end|>", "Thinking.", ""),
    "cut inside the next header": ("<|channel|>analysis<|message|>Hmm.<|end|><|start|>assistant<|chan",
                                   "Hmm.", ""),
    "cut inside a channel name": ("<|channel|>analysis<|message|>Hmm.<|end|><|start|>assistant<|channel|>fin",
                                  "Hmm.", ""),
    "cut inside the first control token": ("<|chan", "", ""),
    "cut inside the token after a message": ("<|channel|>analysis<|message|>a<|end|><|st", "a", ""),
    "final only": ("<|channel|>final<|message|>Just the answer.<|return|>", "", "Just the answer."),
    "no framing at all": ("Plain text, no harmony here.", "", "Plain text, no harmony here."),
    "commentary preamble is content": (
        "<|channel|>analysis<|message|>plan<|end|><|start|>assistant<|channel|>commentary<|message|>"
        "Checking.<|end|><|start|>assistant<|channel|>final<|message|>Done.", "plan", "Checking.Done."),
    "constrained header with recipient": (
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>",
        "", "{\"city\": \"Paris\"}"),
    "header without a channel": ("<|start|>assistant<|message|>hello<|end|>", "", "hello"),
    "two analysis messages": ("<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>analysis"
                              "<|message|>b<|end|><|start|>assistant<|channel|>final<|message|>c", "ab", "c"),
    "angle brackets in text": ("<|channel|>analysis<|message|>if a<b and c<|d then<|end|>"
                               "<|start|>assistant<|channel|>final<|message|>x <| y <", "if a<b and c<|d then", "x <| y <"),
    "unicode": ("<|channel|>analysis<|message|>思考 🙂<|end|><|start|>assistant<|channel|>final<|message|>答え ✓",
                "思考 🙂", "答え ✓"),
}


def parse(pieces: list[str]) -> ReasoningDelta:
    parser = HarmonyParser()
    total = ReasoningDelta()
    for piece in pieces:
        total += parser.feed(piece)
    return total + parser.finish()


def assert_no_framing_token(delta: ReasoningDelta) -> None:
    for token in HARMONY_TOKENS:
        assert token not in delta.reasoning and token not in delta.content, token


@pytest.mark.parametrize("name", CASES)
def test_whole_text(name):
    text, reasoning, content = CASES[name]
    delta = parse([text])
    assert (delta.reasoning, delta.content) == (reasoning, content)
    assert_no_framing_token(delta)


@pytest.mark.parametrize("name", CASES)
def test_every_split_point_gives_the_same_fields(name):
    text, reasoning, content = CASES[name]
    for cut in range(len(text) + 1):
        delta = parse([text[:cut], text[cut:]])
        assert (delta.reasoning, delta.content) == (reasoning, content), cut


@pytest.mark.parametrize("name", CASES)
def test_every_pair_of_split_points_gives_the_same_fields(name):
    text, reasoning, content = CASES[name]
    for first in range(len(text) + 1):
        for second in range(first, len(text) + 1, 3):
            delta = parse([text[:first], text[first:second], text[second:]])
            assert (delta.reasoning, delta.content) == (reasoning, content), (first, second)


@pytest.mark.parametrize("name", CASES)
def test_one_character_at_a_time_and_random_pieces(name):
    text, reasoning, content = CASES[name]
    assert parse(list(text)) == ReasoningDelta(reasoning, content)
    rng = random.Random(name)
    for _ in range(50):
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 12))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert parse(pieces) == ReasoningDelta(reasoning, content)


def test_streamed_deltas_arrive_as_soon_as_they_are_decided():
    parser = HarmonyParser()
    assert parser.feed("<|channel|>analysis<|mess") == ReasoningDelta()
    assert parser.feed("age|>Think") == ReasoningDelta(reasoning="Think")
    assert parser.feed("ing<|e") == ReasoningDelta(reasoning="ing")  # "<|e" may be <|end|>
    assert parser.feed("nd|><|start|>assistant<|channel|>final<|message|>Hi") == ReasoningDelta(content="Hi")
    assert parser.feed(" there <") == ReasoningDelta(content=" there ")
    assert parser.finish() == ReasoningDelta(content="<")


def test_model_selection_rule():
    assert reasoning_format("{{ '<|start|>assistant<|channel|>final<|message|>' }}") == HARMONY
    assert reasoning_format(None, ["<|start|>", "<|channel|>", "<|message|>"]) == HARMONY
    assert reasoning_format("<|im_start|>{{ m }}<|im_end|>", ["<|im_start|>", "<|im_end|>"]) is None
    assert reasoning_format(None) is None
