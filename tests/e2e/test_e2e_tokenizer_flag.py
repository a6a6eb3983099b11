"""`cupyserve serve --tokenizer PATH` with the real SmolLM2 model: a tokenizer.json saved from the
model's own GGUF vocabulary serves the same greedy completions as the GGUF tokenizer, /health
reports the file; a broken file ends startup with exit code 1 and one clear line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from server_process import RunningServer, start_server, stop_server

pytestmark = pytest.mark.e2e

PROMPTS = ["The capital of France is"]
CHAT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def saved_tokenizer(smollm2_gguf, tmp_path_factory) -> Path:
    from cupyserve.runtime.gguf_metadata import read_metadata
    from cupyserve.runtime.tokenizer import Tokenizer

    folder = tmp_path_factory.mktemp("tokenizer-json")
    tokenizer = Tokenizer.from_gguf_metadata(read_metadata(str(smollm2_gguf)))
    return tokenizer.save_tokenizer_json(folder / "tokenizer.json")


@pytest.fixture(scope="module")
def json_server(smollm2_gguf, saved_tokenizer, tmp_path_factory) -> RunningServer:
    running = start_server(smollm2_gguf, tmp_path_factory.mktemp("json-server"),
                           ("--tokenizer", str(saved_tokenizer)))
    try:
        yield running
    finally:
        code = stop_server(running)
    assert code == 0, f"server exited with {code}:\n{running.log_tail()}"


def _greedy(url: str) -> tuple[list[str], str, list[int]]:
    with httpx.Client(base_url=url, timeout=120.0) as client:
        texts = [client.post("/v1/completions", json={"prompt": p, "max_tokens": 6, "temperature": 0}
                             ).json()["choices"][0]["text"] for p in PROMPTS]
        chat = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 6,
                                                          "temperature": 0}).json()
        ids = client.post("/tokenize", json={"messages": CHAT}).json()["tokens"]
    return texts, chat["choices"][0]["message"]["content"], ids


def test_same_completions_as_the_gguf_tokenizer(server, json_server):
    expected = _greedy(server.url)
    assert all(expected[0]) and expected[1]
    assert _greedy(json_server.url) == expected


def test_health_reports_the_tokenizer_file(server, json_server, saved_tokenizer):
    health = httpx.get(f"{json_server.url}/health").json()
    assert health["tokenizer_kind"] == "tokenizer.json"
    assert health["tokenizer_source"] == str(saved_tokenizer)
    default = httpx.get(f"{server.url}/health").json()
    assert default["tokenizer_kind"] == "gguf-bpe" and default["tokenizer_source"] == "gguf"


def _serve(model: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cupyserve.server", "serve", "--model", str(model),
                           "--device", "cpu", "--port", "0", *extra],
                          capture_output=True, text=True, timeout=120)


def test_broken_file_exits_1_with_a_clear_message(smollm2_gguf, tmp_path):
    broken = tmp_path / "tokenizer.json"
    broken.write_text('{"model": {"type": "BPE", "vocab": ')
    result = _serve(smollm2_gguf, "--tokenizer", str(broken))
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cupyserve serve: error:") and str(broken) in last


def test_missing_file_is_a_usage_error(smollm2_gguf, tmp_path):
    result = _serve(smollm2_gguf, "--tokenizer", str(tmp_path / "absent.json"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr
