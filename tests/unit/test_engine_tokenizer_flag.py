"""`--tokenizer PATH`: EngineArgs validates the path, the engine builds its tokenizer from the
tokenizer.json instead of the GGUF vocabulary, /health says which, and a file that cannot serve
the model (broken, or more tokens than embedding rows) is a clear startup error."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from cupyserve.runtime.async_engine import AsyncEngine
from cupyserve.runtime.engine import LLMEngine
from cupyserve.runtime.engine_args import EngineArgs
from cupyserve.runtime.gguf_loader import GGUFFile
from cupyserve.runtime.model_tokenizer import GGUF_SOURCE, load_model_tokenizer
from cupyserve.runtime.sampling_params import SamplingParams
from cupyserve.runtime.tokenizer import Tokenizer, TokenizerError
from cupyserve.server.app import create_app
from cupyserve.server.cli import build_parser, engine_args_from

TEXTS = ["Hello world!", "  leading spaces and\ttabs\n", "naïve café 🙂 ünïcödé",
         "<|im_start|>user\nHi<|im_end|>\n", "12345 + 678 = 13023"]


@pytest.fixture(scope="module")
def gguf(smollm2_gguf) -> GGUFFile:
    return GGUFFile.open(smollm2_gguf)


@pytest.fixture(scope="module")
def saved_tokenizer(gguf, tmp_path_factory) -> Path:
    """SmolLM2's own GGUF vocabulary written as tokenizer.json + tokenizer_config.json."""
    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    return Tokenizer.from_gguf_metadata(gguf.metadata).save_tokenizer_json(folder / "tokenizer.json")


def test_cli_flag_reaches_engine_args(saved_tokenizer):
    args = engine_args_from(build_parser().parse_args(["serve", "--tokenizer", str(saved_tokenizer)]))
    assert args.tokenizer == str(saved_tokenizer) and args.tokenizer_file == saved_tokenizer
    assert engine_args_from(build_parser().parse_args(["serve"])).tokenizer_file is None


def test_a_folder_resolves_to_its_tokenizer_json(saved_tokenizer):
    assert EngineArgs(tokenizer=str(saved_tokenizer.parent)).tokenizer_file == saved_tokenizer


def test_engine_args_refuse_missing_or_unusable_paths(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        EngineArgs(tokenizer=str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match="holds no tokenizer.json"):
        EngineArgs(tokenizer=str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        EngineArgs(tokenizer=str(fifo))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file; permissions cannot be tested")
def test_engine_args_refuse_an_unreadable_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{}")
    path.chmod(0)
    with pytest.raises(ValueError, match="not readable"):
        EngineArgs(tokenizer=str(path))


def test_tokenizer_json_replaces_the_gguf_vocabulary(gguf, saved_tokenizer):
    from_gguf = load_model_tokenizer(gguf, None)
    from_file = load_model_tokenizer(gguf, saved_tokenizer)
    assert from_gguf.source == GGUF_SOURCE and from_gguf.tokenizer.kind == "gguf-bpe"
    assert from_file.source == str(saved_tokenizer) and from_file.tokenizer.kind == "tokenizer.json"
    for text in TEXTS:
        assert from_file.tokenizer.encode(text) == from_gguf.tokenizer.encode(text), text
    assert from_file.tokenizer.eos_ids == from_gguf.tokenizer.eos_ids
    assert from_file.tokenizer.chat_template == from_gguf.tokenizer.chat_template


def test_more_tokens_than_embedding_rows_is_refused_naming_both(gguf, saved_tokenizer, tmp_path):
    document = json.loads(saved_tokenizer.read_text())
    num_rows = gguf.tensors["token_embd.weight"].shape[0]
    document["added_tokens"].append({"id": num_rows + 7, "content": "<|extra|>", "single_word": False,
                                     "lstrip": False, "rstrip": False, "normalized": False,
                                     "special": True})
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(document))
    with pytest.raises(TokenizerError) as excinfo:
        load_model_tokenizer(gguf, path)
    message = str(excinfo.value)
    assert str(num_rows + 8) in message and str(num_rows) in message and str(path) in message


@pytest.mark.parametrize("content", ["{not json", "[1, 2, 3]", '{"model": {"type": "WordPiece"}}'])
def test_a_broken_file_is_a_tokenizer_error_naming_it(gguf, tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(TokenizerError, match=str(path).replace(".", r"\.")):
        load_model_tokenizer(gguf, path)


def test_engine_serves_with_the_file_and_health_reports_it(smollm2_gguf, saved_tokenizer):
    engine = LLMEngine(EngineArgs(model=str(smollm2_gguf), device="cpu", max_model_len=128,
                                  kv_cache_memory=2 << 20, tokenizer=str(saved_tokenizer)))
    health = TestClient(create_app(AsyncEngine(engine))).get("/health").json()
    assert health["tokenizer_kind"] == "tokenizer.json"
    assert health["tokenizer_source"] == str(saved_tokenizer)
    prompt = engine.tokenizer.encode("The capital of France is")
    engine.add_request("r", prompt, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    outputs = []
    while engine.has_unfinished():
        outputs.extend(engine.step())
    text = "".join(o.text for o in outputs)
    assert text == engine.tokenizer.decode([t for o in outputs for t in o.token_ids])
    assert len([t for o in outputs for t in o.token_ids]) == 4
