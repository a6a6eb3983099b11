"""Streaming detokenization and stop strings with SmolLM2's real tokenizer."""
from __future__ import annotations

import random

import pytest

from cupyserve.runtime.detokenizer import IncrementalDetokenizer, StopStringMatcher
from cupyserve.runtime.gguf_metadata import read_metadata
from cupyserve.runtime.tokenizer import Tokenizer

STREAM_TEXTS = [
    "Hello 🦙 world 🚀🌫️ (emoji) ✅ done 👍🏽",
    "我想在apple工作1314151天～ 東京タワーは333メートルです。",
    "naïve café — ünïcödé Ελληνικά русский 한국어 🇫🇷 العربية",
    "<|im_start|>assistant\n😀 Voilà: «ça marche» 🎉<|im_end|>",
]


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(read_metadata(str(smollm2_gguf)))


def stream(tokenizer: Tokenizer, ids: list[int], skip_special_tokens: bool = True) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
    return [detok.push(i) for i in ids] + [detok.flush()]


def has_lone_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@pytest.mark.parametrize("text", STREAM_TEXTS)
@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_streamed_pieces_add_up_to_decode(tokenizer, text, skip_special_tokens):
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = stream(tokenizer, ids, skip_special_tokens)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    for piece in pieces:
        assert "\ufffd" not in piece and not has_lone_surrogate(piece)


def test_split_characters_are_held_until_complete(tokenizer):
    text = "🦙🚀"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > 2, "each emoji should take several byte tokens in SmolLM2's vocabulary"
    detok = IncrementalDetokenizer(tokenizer)
    pieces, pending = [], []
    for token_id in ids:
        pieces.append(detok.push(token_id))
        pending.append(detok.num_pending_bytes)
    assert "" in pieces and max(pending) > 0
    assert [p for p in pieces if p] == ["🦙", "🚀"]
    assert detok.flush() == "" and detok.num_pending_bytes == 0


def test_flush_replaces_a_truncated_character(tokenizer):
    ids = tokenizer.encode("ok 🦙", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer)
    emitted = "".join(detok.push(i) for i in ids[:-1])
    assert emitted == "ok "
    assert detok.flush() == "\ufffd"


def test_special_tokens_skipped_or_rendered(tokenizer):
    ids = tokenizer.encode("<|im_start|>user\nHi<|im_end|>", add_special_tokens=False)
    assert "".join(stream(tokenizer, ids)) == "user\nHi"
    assert "".join(stream(tokenizer, ids, skip_special_tokens=False)) == "<|im_start|>user\nHi<|im_end|>"


def run_matcher(stops: list[str], chunks: list[str]) -> tuple[str, str | None]:
    matcher = StopStringMatcher(stops)
    emitted = []
    for chunk in chunks:
        emit, matched = matcher.feed(chunk)
        emitted.append(emit)
        if matched is not None:
            return "".join(emitted), matched
    return "".join(emitted) + matcher.flush(), None


def test_stop_string_spanning_token_boundaries(tokenizer):
    text = "The capital of France is Paris.\n\nThe United States has a population"
    stop = ".\n\nThe United"
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = stream(tokenizer, ids)
    assert not any(stop in p for p in pieces), "the stop should span several tokens"
    matcher = StopStringMatcher([stop])
    emitted, matched, held_during = [], None, []
    for piece in pieces:
        emit, matched = matcher.feed(piece)
        emitted.append(emit)
        held_during.append(matcher.held)
        if matched:
            break
    assert matched == stop
    assert "".join(emitted) == "The capital of France is Paris"
    assert any(held_during), "a partial stop string should have been held back"
    with pytest.raises(RuntimeError, match="already matched"):
        matcher.feed("more")


def test_stop_string_made_of_split_emoji_bytes(tokenizer):
    ids = tokenizer.encode("launch 🚀 now", add_special_tokens=False)
    assert run_matcher(["🚀"], stream(tokenizer, ids)) == ("launch ", "🚀")


def test_overlapping_stops_first_to_complete_wins():
    assert run_matcher(["world peace", "hello world"], ["say hello world peace"]) == ("say ", "hello world")
    assert run_matcher(["abcd", "bc"], ["xabcd"]) == ("xa", "bc")
    assert run_matcher(["abcd", "bc"], list("xabcd")) == ("xa", "bc")
    # Same end: the one starting earlier wins.
    assert run_matcher(["bc", "abc"], ["xabc"]) == ("x", "abc")
    # A stop that overlaps itself.
    assert run_matcher(["aab"], list("xaaab")) == ("xa", "aab")


def test_results_do_not_depend_on_chunking():
    rng = random.Random(1234)
    text = "Q: what? A: the answer is 42.\nUser: thanks\nAssistant: you're welcome ###"
    stop_sets = [["\nUser:"], ["###", "User"], ["answer is 4", "is 42"], ["zzz"], ["welcome ###", "come"]]
    for stops in stop_sets:
        whole = run_matcher(stops, [text])
        for _ in range(50):
            cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 12)))
            chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
            assert run_matcher(stops, chunks) == whole
    assert run_matcher(["zzz"], [text]) == (text, None)


def test_held_tail_is_released_by_flush():
    matcher = StopStringMatcher(["END"])
    assert matcher.feed("foo E") == ("foo ", None)
    assert matcher.feed("N") == ("", None)
    assert matcher.held == "EN"
    assert matcher.flush() == "EN"
    assert matcher.feed("ENd") == ("ENd", None)


def test_no_stops_passes_text_through():
    matcher = StopStringMatcher([])
    assert matcher.feed("anything") == ("anything", None) and matcher.flush() == ""


def test_invalid_stops_are_rejected():
    with pytest.raises(ValueError):
        StopStringMatcher([""])
    with pytest.raises(TypeError):
        StopStringMatcher("stop")  # type: ignore[arg-type]
