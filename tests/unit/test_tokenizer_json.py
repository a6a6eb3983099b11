"""tokenizer.json conformance: every GGUF fixture vocabulary of ../shared/vocab (byte-level and
SentencePiece), saved as a Hugging Face tokenizer.json and loaded back, encodes llama.cpp's test
strings to llama.cpp's ids, and keeps its special and added tokens, special ids and flags."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer

from cupyserve.runtime.gguf_metadata import read_metadata
from cupyserve.runtime.gguf_vocab import SPECIAL_TYPES
from cupyserve.runtime.tokenizer import Tokenizer, TokenizerError

from test_tokenizer_vocab import VOCAB_NAMES, read_cases, vocab_path


@pytest.fixture(scope="module")
def metadata() -> dict[str, dict]:
    return {name: read_metadata(str(vocab_path(name))) for name in VOCAB_NAMES}


@pytest.fixture(scope="module")
def from_gguf(metadata) -> dict[str, Tokenizer]:
    return {name: Tokenizer.from_gguf_metadata(md) for name, md in metadata.items()}


@pytest.fixture(scope="module")
def saved(from_gguf, tmp_path_factory) -> dict[str, Path]:
    """Each fixture tokenizer written as <tmp>/<name>/tokenizer.json (+ tokenizer_config.json)."""
    paths = {}
    for name, tok in from_gguf.items():
        folder = tmp_path_factory.mktemp(name)
        paths[name] = tok.save_tokenizer_json(folder / "tokenizer.json")
    return paths


@pytest.fixture(scope="module")
def loaded(saved) -> dict[str, Tokenizer]:
    return {name: Tokenizer.from_tokenizer_json(path) for name, path in saved.items()}


@pytest.mark.parametrize("name", VOCAB_NAMES)
def test_round_trip_encodes_every_fixture_string_to_llama_cpp_ids(loaded, name):
    tok = loaded[name]
    assert tok.kind == "tokenizer.json"
    mismatches = [
        (text, ids) for text, ids in read_cases(name)
        if tok.encode(text, add_special_tokens=False, parse_special=False) != ids
    ]
    assert mismatches == []


@pytest.mark.parametrize("name", VOCAB_NAMES)
def test_round_trip_keeps_special_ids_and_flags(from_gguf, loaded, name):
    original, back = from_gguf[name], loaded[name]
    assert back.vocab_size == original.vocab_size and back.vocab.tokens == original.vocab.tokens
    assert (back.bos_id, back.eos_id, back.eot_id) == (original.bos_id, original.eos_id, original.eot_id)
    assert (back.add_bos, back.add_eos) == (original.add_bos, original.add_eos)
    assert back.eos_ids == original.eos_ids
    assert back.chat_template == original.chat_template
    assert (back.vocab.lstrip_ids, back.vocab.rstrip_ids) == (original.vocab.lstrip_ids, original.vocab.rstrip_ids)
    assert [back.token_bytes(i) for i in range(back.vocab_size)] == [
        original.token_bytes(i) for i in range(original.vocab_size)
    ]
    assert [back.is_special(i) for i in range(back.vocab_size)] == [
        original.is_special(i) for i in range(original.vocab_size)
    ]
    assert back.encode("Hello world") == original.encode("Hello world")


@pytest.mark.parametrize("name", VOCAB_NAMES)
def test_special_and_added_tokens_survive_the_round_trip(from_gguf, loaded, name):
    original, back = from_gguf[name], loaded[name]
    specials = [i for i, t in enumerate(original.vocab.token_types) if t in SPECIAL_TYPES]
    assert specials, "every fixture vocabulary has special tokens"
    for token_id in specials:
        text = original.vocab.tokens[token_id]
        assert back.encode(text, add_special_tokens=False, parse_special=True) == [token_id]
        assert back.decode([token_id]) == text
    # Inside running text too, with the whitespace rules (phi-3's RSTRIP) intact.
    text = "a " + " b ".join(original.vocab.tokens[i] for i in specials[:20]) + " c"
    expected = original.encode(text, add_special_tokens=False, parse_special=True)
    assert back.encode(text, add_special_tokens=False, parse_special=True) == expected
    assert back.encode(text, add_special_tokens=False, parse_special=False) == original.encode(
        text, add_special_tokens=False, parse_special=False)


@pytest.mark.parametrize("name", VOCAB_NAMES)
def test_saved_file_means_the_same_to_the_tokenizers_library(saved, name):
    # The file is an ordinary tokenizer.json: HF's own tokenizer, added-token handling and all,
    # gives llama.cpp's ids on the fixture strings (none of them contains special-token text).
    hf = HFTokenizer.from_file(str(saved[name]))
    for text, ids in read_cases(name):
        if text:
            assert hf.encode(text, add_special_tokens=False).ids == ids, text


def test_saved_config_names_the_special_tokens(saved):
    config = json.loads(saved["llama-spm"].with_name("tokenizer_config.json").read_text(encoding="utf-8"))
    assert (config["bos_token"], config["eos_token"], config["unk_token"]) == ("<s>", "</s>", "<unk>")
    assert config["add_bos_token"] is True and config["add_eos_token"] is False


def test_missing_config_falls_back_to_gguf_metadata(metadata, from_gguf, saved, tmp_path):
    source = saved["llama-bpe"]
    (tmp_path / "tokenizer.json").write_bytes(source.read_bytes())
    without = Tokenizer.from_tokenizer_json(tmp_path)
    assert without.bos_id is None and not without.add_bos
    with_gguf = Tokenizer.from_tokenizer_json(tmp_path / "tokenizer.json", gguf_metadata=metadata["llama-bpe"])
    original = from_gguf["llama-bpe"]
    assert (with_gguf.bos_id, with_gguf.eos_id, with_gguf.add_bos) == (original.bos_id, original.eos_id, True)
    assert with_gguf.chat_template == original.chat_template
    assert with_gguf.encode("Hello world") == original.encode("Hello world")


def test_loaded_tokenizer_saves_its_source_again(loaded, tmp_path):
    again = loaded["qwen2"].save_tokenizer_json(tmp_path / "tokenizer.json")
    reloaded = Tokenizer.from_tokenizer_json(again)
    for text, ids in read_cases("qwen2"):
        assert reloaded.encode(text, add_special_tokens=False, parse_special=False) == ids


def test_unsupported_or_broken_files_are_clear_errors(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {"a": 0}}}), encoding="utf-8")
    with pytest.raises(TokenizerError, match="WordPiece.*only BPE"):
        Tokenizer.from_tokenizer_json(path)
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}), encoding="utf-8")
    with pytest.raises(TokenizerError, match="bos_token '<s>'.*not in the vocabulary"):
        Tokenizer.from_tokenizer_json(path)
