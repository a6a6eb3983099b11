"""The CLI: flags map onto EngineArgs, byte sizes parse, help is fast and complete."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from cupyserve.server.byte_size import parse_byte_size
from cupyserve.server.cli import build_parser, engine_args_from, main, model_aliases
from cupyserve.server.server_state import ServerState
from test_server_fake_engine import FakeEngine, assert_openai_error, client_for


@pytest.mark.parametrize("text,expected", [
    ("1048576", 1048576), ("512MiB", 512 * 2**20), ("2GB", 2 * 10**9), ("1.5GiB", int(1.5 * 2**30)),
    ("64k", 64 * 1024), ("10 MB", 10**7), ("3b", 3),
])
def test_parse_byte_size(text, expected):
    assert parse_byte_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "12XB", "-5MiB", "0", "1.5.2G"])
def test_parse_byte_size_rejects(text):
    with pytest.raises(ValueError):
        parse_byte_size(text)


def test_serve_flags_build_engine_args():
    ns = build_parser().parse_args([
        "serve", "--model", "/m/x.gguf", "--device", "cpu", "--max-num-seqs", "4",
        "--max-num-batched-tokens", "256", "--max-model-len", "1024", "--kv-cache-memory", "512MiB",
        "--gpu-memory-utilization", "0.5", "--block-size", "32", "--seed", "9", "--no-pull",
        "--served-model-name", "mine", "--no-prefix-caching"])
    args = engine_args_from(ns)
    assert (args.model, args.device, args.max_num_seqs, args.max_num_batched_tokens) == ("/m/x.gguf", "cpu", 4, 256)
    assert args.max_model_len == 1024 and args.kv_cache_memory == 512 * 2**20
    assert args.gpu_memory_utilization == 0.5 and args.block_size == 32 and args.seed == 9
    assert args.pull_if_missing is False and args.served_model_name == "mine"
    assert args.enable_prefix_caching is False
    assert ns.host == "127.0.0.1" and ns.port == 8000 and ns.shutdown_grace_seconds == 30.0


def test_default_model_is_engine_args_default():
    from cupyserve.runtime.engine_args import EngineArgs

    assert engine_args_from(build_parser().parse_args(["serve"])).model == EngineArgs().model


def test_bad_byte_size_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as excinfo:
        build_parser().parse_args(["serve", "--kv-cache-memory", "lots"])
    assert excinfo.value.code == 2
    assert "not a byte size" in capsys.readouterr().err


def test_every_serve_flag_has_help():
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]
    for action in serve._actions:
        assert action.help, action.dest


def test_model_aliases():
    assert model_aliases("/a/b/SmolLM2.Q4_1.gguf", "SmolLM2.Q4_1") == ["/a/b/SmolLM2.Q4_1.gguf",
                                                                       "SmolLM2.Q4_1.gguf"]
    assert model_aliases("smollm2-135m-instruct", "SmolLM2") == ["smollm2-135m-instruct"]


def test_help_is_fast_and_imports_no_runtime_heavyweights():
    code = ("import sys; from cupyserve.server.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('numpy', 'jinja2', 'cupy', 'cupyserve.runtime.engine') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_pull_failure_exits_1(monkeypatch, capsys):
    import cupyserve.runtime.pull as pull_module

    def failing_pull(name):
        raise RuntimeError(f"no such model {name}")

    monkeypatch.setattr(pull_module, "pull", failing_pull)
    assert main(["pull", "nothing"]) == 1
    assert "no such model nothing" in capsys.readouterr().err


def test_drain_refuses_new_work_and_waits_for_live_completions():
    engine = FakeEngine()
    client = client_for(engine)
    state: ServerState = client.app.state.server
    state.register("cmpl-1", ("cmpl-1-0",))
    state.begin_drain()
    assert assert_openai_error(client.post("/v1/completions", json={"prompt": "a"}), 503)["code"] == "shutting_down"
    assert client.get("/health").json()["status"] == "shutting_down"
    assert asyncio.run(state.wait_idle(0.05)) is False
    state.abort_all()
    assert engine.aborted == ["cmpl-1-0"]
    state.unregister("cmpl-1")
    assert asyncio.run(state.wait_idle(0.05)) is True
