"""GGUF tokenizers against llama.cpp's own conformance fixtures (../shared/vocab): byte-level BPE
(gpt-2, llama-bpe, qwen2) and SentencePiece BPE (phi-3, llama-spm).

Each `ggml-vocab-<name>.gguf.inp` holds test strings separated by "\\n__ggml_vocab_test__\\n"
(the separator's newlines are not part of the strings); `.out` holds the expected ids, one line
per string. llama.cpp's test-tokenizer-0 encodes them with add_special=false, parse_special=false.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from cupyserve.runtime.gguf_metadata import read_metadata
from cupyserve.runtime.tokenizer import Tokenizer, TokenizerError

from testdata import shared_dir

BYTE_LEVEL_NAMES = ("gpt-2", "llama-bpe", "qwen2")
SENTENCEPIECE_NAMES = ("phi-3", "llama-spm")
VOCAB_NAMES = BYTE_LEVEL_NAMES + SENTENCEPIECE_NAMES
SEPARATOR = "\n__ggml_vocab_test__\n"


def vocab_path(name: str) -> Path:
    return shared_dir() / "vocab" / f"ggml-vocab-{name}.gguf"


def read_cases(name: str) -> list[tuple[str, list[int]]]:
    path = vocab_path(name)
    raw = Path(f"{path}.inp").read_text(encoding="utf-8")
    inputs = raw.split(SEPARATOR)
    assert inputs[-1] == "", "the .inp file should end with a separator"
    inputs = inputs[:-1]
    lines = Path(f"{path}.out").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    expected = [[int(x) for x in line.split()] for line in lines[:-1]]
    assert len(inputs) == len(expected), f"{name}: {len(inputs)} inputs but {len(expected)} outputs"
    return list(zip(inputs, expected))


CASES = [(name, i, text, ids) for name in VOCAB_NAMES for i, (text, ids) in enumerate(read_cases(name))]


@pytest.fixture(scope="module")
def metadata() -> dict[str, dict]:
    """Metadata of each fixture vocab, read once per module (reading is the slow part)."""
    return {name: read_metadata(str(vocab_path(name))) for name in VOCAB_NAMES}


@pytest.fixture(scope="module")
def tokenizers(metadata) -> dict[str, Tokenizer]:
    return {name: Tokenizer.from_gguf_metadata(md) for name, md in metadata.items()}


def test_fixtures_are_not_trivial():
    assert len(CASES) == 5 * 46
    assert any("\n" in text for _, _, text, _ in CASES)
    assert any(text == "" for _, _, text, _ in CASES)


@pytest.mark.parametrize("name,index,text,expected", CASES, ids=[f"{n}-{i}" for n, i, _, _ in CASES])
def test_encode_matches_llama_cpp(tokenizers, name, index, text, expected):
    tok = tokenizers[name]
    assert tok.encode(text, add_special_tokens=False, parse_special=False) == expected


@pytest.mark.parametrize("name", BYTE_LEVEL_NAMES)
def test_decode_restores_every_fixture_string(tokenizers, name):
    tok = tokenizers[name]
    for text, expected in read_cases(name):
        assert tok.decode(expected) == text


@pytest.mark.parametrize("name", VOCAB_NAMES)
def test_build_is_fast(metadata, name):
    start = time.perf_counter()
    Tokenizer.from_gguf_metadata(metadata[name])
    # ~1 s for 150k tokens on one core; the margin absorbs a busy shared CI machine.
    assert time.perf_counter() - start < 5.0


def test_attributes_follow_metadata_and_llama_cpp_defaults(tokenizers):
    gpt2, llama3, qwen2 = tokenizers["gpt-2"], tokenizers["llama-bpe"], tokenizers["qwen2"]
    assert (gpt2.kind, gpt2.vocab_size, gpt2.bos_id, gpt2.eos_id) == ("gguf-bpe", 50257, 50256, 50256)
    # Neither file has add_bos_token: llama.cpp adds BOS for the llama3 pre-tokenizer only.
    assert llama3.add_bos and not gpt2.add_bos and not qwen2.add_bos
    assert llama3.encode("Hello world") == [128000, 9906, 1917]
    assert llama3.encode("Hello world", add_special_tokens=False) == [9906, 1917]
    assert gpt2.encode("Hello world") == gpt2.encode("Hello world", add_special_tokens=False)
    # <|eot_id|> and <|im_end|> end generation as well as the eos token.
    assert llama3.eos_ids == frozenset({128001, 128009})
    assert qwen2.eos_ids == frozenset({151643, 151645})
    assert llama3.bos_token == "<|begin_of_text|>" and qwen2.eos_token == "<|endoftext|>"


def test_parse_special_controls_special_token_text(tokenizers):
    qwen2 = tokenizers["qwen2"]
    text = "<|im_start|>user\nHi<|im_end|>"
    parsed = qwen2.encode(text, add_special_tokens=False, parse_special=True)
    plain = qwen2.encode(text, add_special_tokens=False, parse_special=False)
    assert parsed[0] == 151644 and parsed[-1] == 151645
    assert 151644 not in plain and 151645 not in plain and len(plain) > len(parsed)
    assert qwen2.decode(parsed) == text == qwen2.decode(plain)
    assert qwen2.decode(parsed, skip_special_tokens=True) == "user\nHi"


def test_token_bytes_undo_the_byte_level_map(tokenizers):
    gpt2 = tokenizers["gpt-2"]
    space_hello = gpt2.encode(" Hello", add_special_tokens=False)
    assert [gpt2.token_bytes(i) for i in space_hello] == [b" Hello"]
    # A llama emoji is split into byte tokens; each holds part of its 4 UTF-8 bytes.
    ids = gpt2.encode("🦙", add_special_tokens=False)
    assert b"".join(gpt2.token_bytes(i) for i in ids) == "🦙".encode()
    assert len(ids) > 1 and all(gpt2.token_text(i) == "\ufffd" for i in ids[:1])
    assert gpt2.token_bytes(50256) == b"<|endoftext|>" and gpt2.is_special(50256)
    assert not gpt2.is_special(space_hello[0])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gpt2.token_bytes(50257)
    with pytest.raises(ValueError, match="-1 is outside the vocabulary"):
        gpt2.decode(iter([space_hello[0], -1]))


def test_unknown_pre_tokenizer_is_a_clear_error(metadata):
    md = dict(metadata["gpt-2"], **{"tokenizer.ggml.pre": "no-such-pre"})
    with pytest.raises(TokenizerError, match=r"'no-such-pre'.*supported:.*gpt-2.*llama-bpe.*qwen2.*smollm"):
        Tokenizer.from_gguf_metadata(md)


def test_unsupported_model_kind_is_a_clear_error(metadata):
    md = dict(metadata["gpt-2"], **{"tokenizer.ggml.model": "bert"})
    with pytest.raises(TokenizerError, match=r"'bert'.*supported: gpt2, llama"):
        Tokenizer.from_gguf_metadata(md)
    with pytest.raises(TokenizerError, match="no tokenizer.ggml.model"):
        Tokenizer.from_gguf_metadata({})


# The gpt-4o (o200k) pre-tokenizer, split as the encoder splits (HF Split, "isolated"). Expected
# pieces derived by hand from the regex: a word is [^\r\n\p{L}\p{N}]? + upper* + lower+ (or
# upper+ + lower*), with an optional case-insensitive contraction; digits go in groups of at most
# 3; a punctuation run takes one leading space and trailing newlines or slashes; the last space
# before a word stays with the word.
GPT4O_SPLITS = [
    ("I'm here", ["I'm", " here"]),
    ("don't DON'T", ["don't", " DON'T"]),
    ("helloWorld HELLOWorld", ["hello", "World", " HELLOWorld"]),
    ("1234567", ["123", "456", "7"]),
    ("$1,000/month", ["$", "1", ",", "000", "/month"]),
    ("Hi!!! ok...\n\nb", ["Hi", "!!!", " ok", "...\n\n", "b"]),
    ("日本語のテキスト 你好", ["日本語のテキスト", " 你好"]),
    ("a   b", ["a", "  ", " b"]),
    ("x\n\n  y", ["x", "\n\n", " ", " y"]),
]


@pytest.mark.parametrize("text,pieces", GPT4O_SPLITS, ids=[t for t, _ in GPT4O_SPLITS])
def test_gpt4o_pre_tokenizer_splits(text, pieces):
    from tokenizers import Regex
    from tokenizers.pre_tokenizers import Split

    from cupyserve.runtime.pretokenizer_regex import GPT4O_PATTERN, pre_tokenizer_spec

    assert pre_tokenizer_spec("gpt-4o").patterns == (GPT4O_PATTERN,)
    split = Split(Regex(GPT4O_PATTERN), behavior="isolated")
    assert [piece for piece, _ in split.pre_tokenize_str(text)] == pieces
