"""SmolLM2's tokenizer, built from the real GGUF, against ids recorded with llama.cpp
(../shared/goldens/smollm2-135m-instruct-q4_1.json; see its README for the protocol)."""
from __future__ import annotations

import json

import pytest

from cupyserve.runtime.gguf_metadata import read_metadata
from cupyserve.runtime.tokenizer import Tokenizer

from testdata import shared_dir

GOLDENS = json.loads((shared_dir() / "goldens" / "smollm2-135m-instruct-q4_1.json").read_text(encoding="utf-8"))
TOKENIZATIONS = GOLDENS["tokenizations"]
GENERATIONS = GOLDENS["generations"]


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(read_metadata(str(smollm2_gguf)))


def test_goldens_exercise_special_token_parsing():
    assert len(TOKENIZATIONS) >= 10
    assert any(e["ids_parse_special"] != e["ids_plain"] for e in TOKENIZATIONS)


@pytest.mark.parametrize("entry", TOKENIZATIONS, ids=[f"tok{i}" for i in range(len(TOKENIZATIONS))])
def test_tokenization_with_special_tokens_parsed(tokenizer, entry):
    ids = tokenizer.encode(entry["text"], add_special_tokens=False, parse_special=True)
    assert ids == entry["ids_parse_special"]


@pytest.mark.parametrize("entry", TOKENIZATIONS, ids=[f"tok{i}" for i in range(len(TOKENIZATIONS))])
def test_tokenization_with_special_text_as_plain_text(tokenizer, entry):
    ids = tokenizer.encode(entry["text"], add_special_tokens=False, parse_special=False)
    assert ids == entry["ids_plain"]


@pytest.mark.parametrize("generation", GENERATIONS, ids=[f"gen{i}" for i in range(len(GENERATIONS))])
def test_generation_prompt_ids(tokenizer, generation):
    assert tokenizer.encode(generation["prompt"], add_special_tokens=False) == generation["prompt_ids"]
    # SmolLM2's file sets add_bos_token false: the default encode adds nothing either.
    assert tokenizer.encode(generation["prompt"]) == generation["prompt_ids"]


@pytest.mark.parametrize("generation", GENERATIONS, ids=[f"gen{i}" for i in range(len(GENERATIONS))])
def test_generated_ids_decode_to_llama_cpp_text(tokenizer, generation):
    # llama.cpp's text is the concatenation of its token pieces, control tokens rendered empty.
    assert tokenizer.decode(generation["ids"], skip_special_tokens=True) == generation["text"]


def test_smollm2_special_ids(tokenizer):
    assert tokenizer.kind == "gguf-bpe" and tokenizer.vocab_size == 49152
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.add_bos) == (1, 2, False)
    assert tokenizer.eos_ids == frozenset({0, 2})  # <|endoftext|> and <|im_end|>
    assert tokenizer.chat_template is not None and "<|im_start|>" in tokenizer.chat_template
