"""SentencePiece BPE (GGUF `tokenizer.ggml.model == "llama"`) beyond the plain-text fixtures that
test_tokenizer_vocab.py checks: BOS, the space prefix, byte fallback, token bytes, phi-3's
whitespace-stripping special tokens, and speed. Expected ids come from llama.cpp's fixtures
(../shared/vocab) or from llama.cpp output recorded elsewhere, never from this code."""
from __future__ import annotations

import time

import pytest

from cupyserve.runtime.gguf_metadata import read_metadata
from cupyserve.runtime.gguf_vocab import TokenType
from cupyserve.runtime.tokenizer import Tokenizer

from testdata import shared_dir
from test_tokenizer_vocab import SENTENCEPIECE_NAMES, read_cases, vocab_path


@pytest.fixture(scope="module")
def metadata() -> dict[str, dict]:
    return {name: read_metadata(str(vocab_path(name))) for name in SENTENCEPIECE_NAMES}


@pytest.fixture(scope="module")
def tokenizers(metadata) -> dict[str, Tokenizer]:
    return {name: Tokenizer.from_gguf_metadata(md) for name, md in metadata.items()}


def fixture_ids(name: str, text: str) -> list[int]:
    return next(ids for t, ids in read_cases(name) if t == text)


@pytest.mark.parametrize("name", SENTENCEPIECE_NAMES)
def test_bos_is_added_as_the_file_says(tokenizers, name):
    tok = tokenizers[name]
    assert tok.kind == "gguf-spm" and tok.add_bos and tok.bos_id == 1 and tok.bos_token == "<s>"
    expected = fixture_ids(name, "Hello world")
    assert tok.encode("Hello world") == [1, *expected]
    assert tok.encode("Hello world", add_special_tokens=False) == expected
    assert tok.encode("", add_special_tokens=True) == [1] and tok.encode("", add_special_tokens=False) == []


def test_add_bos_defaults_to_true_for_sentencepiece(metadata):
    md = {k: v for k, v in metadata["llama-spm"].items() if k != "tokenizer.ggml.add_bos_token"}
    assert Tokenizer.from_gguf_metadata(md).add_bos


@pytest.mark.parametrize("name", SENTENCEPIECE_NAMES)
def test_decode_renders_the_space_prefix_and_every_byte(tokenizers, name):
    # llama.cpp's token pieces keep the "▁" the prefix added; byte tokens give back raw bytes.
    tok = tokenizers[name]
    for text, ids in read_cases(name):
        assert tok.decode(ids) == (" " + text if text else "")


def test_space_prefix_can_be_turned_off(metadata, tokenizers):
    md = dict(metadata["llama-spm"], **{"tokenizer.ggml.add_space_prefix": False})
    no_prefix = Tokenizer.from_gguf_metadata(md)
    with_prefix = tokenizers["llama-spm"]
    # " Hello world" with the prefix off is "Hello world" with it on.
    assert no_prefix.encode(" Hello world", add_special_tokens=False) == fixture_ids("llama-spm", "Hello world")
    assert no_prefix.decode(no_prefix.encode("Hello", add_special_tokens=False)) == "Hello"
    assert with_prefix.decode(with_prefix.encode("Hello", add_special_tokens=False)) == " Hello"


def test_characters_outside_the_vocabulary_fall_back_to_bytes(tokenizers):
    tok = tokenizers["llama-spm"]
    ids = tok.encode("🦙\n", add_special_tokens=False)
    types = [tok.vocab.token_types[i] for i in ids]
    # "▁" from the prefix, then the emoji's 4 UTF-8 bytes and the newline as <0xNN> tokens.
    assert types[1:] == [TokenType.BYTE] * 5
    assert [tok.vocab.tokens[i] for i in ids[1:]] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>", "<0x0A>"]
    assert [tok.token_bytes(i) for i in ids[1:]] == [b"\xf0", b"\x9f", b"\xa6", b"\x99", b"\n"]
    assert tok.token_text(ids[1]) == "\ufffd"


def test_token_bytes_turn_the_space_mark_into_a_space(tokenizers):
    tok = tokenizers["llama-spm"]
    (hello,) = tok.encode(" Hello", add_special_tokens=False)[-1:]
    assert tok.vocab.tokens[hello] == "\u2581Hello" and tok.token_bytes(hello) == b" Hello"
    assert tok.token_bytes(tok.bos_id) == b"<s>" and tok.is_special(tok.bos_id)
    assert tok.decode([1, hello, 2], skip_special_tokens=True) == " Hello"


# A phi-3 chat turn; llama.cpp's ids as recorded in another project's notes on the same vocab
# (mini-4k, 32064 tokens): the whitespace after each special token is dropped (RSTRIP), so the
# next fragment starts a word with the space prefix.
PHI3_TURN = "<|user|>\nSYS\nHI<|end|>\n<|assistant|>\n"
PHI3_TURN_IDS = [1, 32010, 317, 21554, 13, 17628, 32007, 32001]
PHI3_TURN_IDS_WITHOUT_RSTRIP = [1, 32010, 29871, 13, 14816, 29903, 13, 17628, 32007, 29871, 13, 32001, 29871, 13]


def test_phi3_special_tokens_strip_the_whitespace_after_them(tokenizers):
    tok = tokenizers["phi-3"]
    assert tok.encode(PHI3_TURN) == PHI3_TURN_IDS
    # <s> and <unk> are exempt, </s> (user-defined here) is added by name.
    assert 1 not in tok.vocab.rstrip_ids and 0 not in tok.vocab.rstrip_ids
    assert 32007 in tok.vocab.rstrip_ids and 2 in tok.vocab.rstrip_ids


def test_rstrip_is_keyed_on_the_model_name(metadata):
    # llama.cpp decides by general.name ("Phi3" here); the same vocabulary under another name
    # keeps its whitespace.
    assert metadata["phi-3"]["general.name"] == "Phi3"
    other = Tokenizer.from_gguf_metadata(dict(metadata["phi-3"], **{"general.name": "Some Model"}))
    assert not other.vocab.rstrip_ids
    assert other.encode(PHI3_TURN) == PHI3_TURN_IDS_WITHOUT_RSTRIP
    # Each fragment after a special token got its own space prefix.
    assert other.decode(PHI3_TURN_IDS_WITHOUT_RSTRIP[1:]) == "<|user|> \nSYS\nHI<|end|> \n<|assistant|> \n"


def test_parse_special_off_spells_control_tokens_as_text(tokenizers):
    tok = tokenizers["phi-3"]
    plain = tok.encode("<|end|>", add_special_tokens=False, parse_special=False)
    assert 32007 not in plain and len(plain) > 1
    assert tok.decode(plain) == " <|end|>"


def test_realistic_32k_prompt_encodes_fast(tokenizers):
    text = (shared_dir() / "goldens" / "ppl-text.txt").read_text(encoding="utf-8")
    text = (text * (32768 // len(text) + 1))[:32768]
    tok = tokenizers["llama-spm"]
    start = time.perf_counter()
    ids = tok.encode(text, add_special_tokens=False)
    elapsed = time.perf_counter() - start
    assert tok.decode(ids) == " " + text
    assert elapsed < 1.0


def test_long_text_without_spaces_is_merged_whole_in_reasonable_time(tokenizers):
    # No cut point: the merge runs over all 32768 characters at once.
    tok = tokenizers["llama-spm"]
    start = time.perf_counter()
    ids = tok.encode("ab" * 16384, add_special_tokens=False)
    elapsed = time.perf_counter() - start
    assert tok.decode(ids) == " " + "ab" * 16384
    assert elapsed < 3.0
