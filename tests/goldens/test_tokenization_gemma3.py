"""Gemma 3's SentencePiece tokenizer, built from the real GGUF, against ids recorded with llama.cpp
(../shared/goldens/gemma3-270m-q4_k_m.json; see its README for the protocol)."""
from __future__ import annotations

import json

import pytest

from cupyserve.runtime.gguf_metadata import read_metadata
from cupyserve.runtime.models.family import default_chat_template
from cupyserve.runtime.tokenizer import Tokenizer

from testdata import shared_dir

GOLDENS = json.loads((shared_dir() / "goldens" / "gemma3-270m-q4_k_m.json").read_text(encoding="utf-8"))
TOKENIZATIONS = GOLDENS["tokenizations"]
GENERATIONS = GOLDENS["generations"]


@pytest.fixture(scope="module")
def tokenizer(gemma3_gguf) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(read_metadata(str(gemma3_gguf)))


def test_goldens_exercise_special_tokens_and_byte_fallback():
    assert len(TOKENIZATIONS) >= 10
    assert any(e["ids_parse_special"] != e["ids_plain"] for e in TOKENIZATIONS)
    assert any(ord(c) > 0xFFFF for e in TOKENIZATIONS for c in e["text"])


@pytest.mark.parametrize("entry", TOKENIZATIONS, ids=[f"tok{i}" for i in range(len(TOKENIZATIONS))])
def test_tokenization_with_special_tokens_parsed(tokenizer, entry):
    ids = tokenizer.encode(entry["text"], add_special_tokens=False, parse_special=True)
    assert ids == entry["ids_parse_special"]


@pytest.mark.parametrize("entry", TOKENIZATIONS, ids=[f"tok{i}" for i in range(len(TOKENIZATIONS))])
def test_tokenization_with_special_text_as_plain_text(tokenizer, entry):
    ids = tokenizer.encode(entry["text"], add_special_tokens=False, parse_special=False)
    assert ids == entry["ids_plain"]


@pytest.mark.parametrize("entry", TOKENIZATIONS, ids=[f"tok{i}" for i in range(len(TOKENIZATIONS))])
def test_plain_ids_decode_to_the_text(tokenizer, entry):
    # Gemma's file turns the space prefix off, so the pieces spell the text exactly.
    assert tokenizer.decode(entry["ids_plain"]) == entry["text"]


@pytest.mark.parametrize("generation", GENERATIONS, ids=[f"gen{i}" for i in range(len(GENERATIONS))])
def test_generation_prompt_ids(tokenizer, generation):
    assert tokenizer.encode(generation["prompt"], add_special_tokens=False) == generation["prompt_ids"]
    # add_bos_token is true: the model saw BOS + prompt_ids.
    assert tokenizer.encode(generation["prompt"]) == [tokenizer.bos_id, *generation["prompt_ids"]]


@pytest.mark.parametrize("generation", GENERATIONS, ids=[f"gen{i}" for i in range(len(GENERATIONS))])
def test_generated_ids_decode_to_llama_cpp_text(tokenizer, generation):
    assert tokenizer.decode(generation["ids"], skip_special_tokens=True) == generation["text"]


def test_gemma3_special_ids(tokenizer):
    assert tokenizer.kind == "gguf-spm" and tokenizer.vocab_size == 262144
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.add_bos) == (2, 1, True)
    assert tokenizer.bos_token == "<bos>" and tokenizer.eos_token == "<eos>"
    assert tokenizer.eos_ids == frozenset({1, 106})  # <eos> and <end_of_turn>
    # This file (the base model) carries no template: the gemma3 family's own applies.
    assert tokenizer.chat_template == default_chat_template("gemma3")
    assert tokenizer.chat_template.lstrip().startswith("{#- Gemma")
    assert not tokenizer.vocab.rstrip_ids and not tokenizer.vocab.lstrip_ids
