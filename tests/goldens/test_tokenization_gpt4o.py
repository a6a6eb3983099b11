"""The gpt-4o (o200k) pre-tokenizer: our GGUF tokenizer gives exactly llama.cpp's `llama-tokenize`
ids on the synthetic gpt-oss vocabulary (`tokenizer.ggml.pre = gpt-4o`), with and without
special-token parsing. The ids were recorded by tests/oracle/record_gpt4o_tokenization.py."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cupyserve.runtime.gguf_loader import GGUFFile
from cupyserve.runtime.tokenizer import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oracle"))
from make_synthetic_family_gguf import content_hash  # noqa: E402
from make_synthetic_gpt_oss_gguf import FIXTURE  # noqa: E402

RECORDED = json.loads((FIXTURE.parent / "synthetic-gpt-oss-tokenize.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    assert content_hash(FIXTURE) == RECORDED["content_hash"], "the fixture is not the file llama.cpp read"
    metadata = GGUFFile.open(FIXTURE).metadata
    assert metadata["tokenizer.ggml.pre"] == "gpt-4o"
    return Tokenizer.from_gguf_metadata(metadata)


@pytest.mark.parametrize("case", RECORDED["cases"], ids=[repr(c["text"][:24]) for c in RECORDED["cases"]])
def test_ids_match_llama_tokenize(tokenizer, case):
    text = case["text"]
    assert tokenizer.encode(text, add_special_tokens=False) == case["ids"]
    assert tokenizer.encode(text, add_special_tokens=False, parse_special=False) == case["ids_no_special"]
    assert tokenizer.decode(case["ids"]) == text  # byte-level BPE is lossless


def test_recorded_set_exercises_the_regex():
    # Guards against re-recording a trivial set: digit groups, several scripts, specials.
    texts = " ".join(c["text"] for c in RECORDED["cases"])
    assert "1234567" in texts and "日本語" in texts and "<|message|>" in texts
    assert sum(len(c["ids"]) for c in RECORDED["cases"]) > 500
