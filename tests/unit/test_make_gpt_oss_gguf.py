"""benchmarks/make_gpt_oss_gguf.py: the 20b layout (checked from a --dry-run header against the
gpt-oss family's expected shapes) and a tiny file that the CPU engine loads and runs."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from cupyserve.kernels.reference.dequant import dequantize
from cupyserve.runtime.gguf_loader import GGUFFile
from cupyserve.runtime.models import resolve_model_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import make_gpt_oss_gguf as writer  # noqa: E402


@pytest.fixture(scope="module")
def header_20b(tmp_path_factory) -> GGUFFile:
    path = tmp_path_factory.mktemp("oss20b") / "gpt-oss-20b-header.gguf"
    writer.write("gpt-oss-20b", str(path), is_dry_run=True)
    return GGUFFile.open(path)


def test_20b_header_has_the_real_files_size_and_the_family_accepts_its_shapes(header_20b):
    # The real gpt-oss-20b-mxfp4.gguf is 12.1 GB.
    assert 12.0e9 < header_20b.file_size < 12.2e9
    config, _family, hparams = resolve_model_config(header_20b)  # validates every tensor shape
    assert (config.num_layers, config.hidden_size, config.ffn_size) == (24, 2880, 2880)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (64, 8, 64)
    assert (config.vocab_size, config.context_length) == (201088, 131072)
    assert (hparams["num_experts"], hparams["num_experts_used"], hparams["sliding_window"]) == (32, 4, 128)
    assert hparams["rope_scaling_type"] == "yarn"
    assert (hparams["rope_scaling_factor"], hparams["rope_original_context"]) == (32.0, 4096)
    assert (hparams["rope_yarn_beta_fast"], hparams["rope_yarn_beta_slow"]) == (32.0, 1.0)


def test_20b_tensor_types_follow_the_mxfp4_moe_recipe(header_20b):
    types = {name: info.ggml_type for name, info in header_20b.tensors.items()}
    assert len(types) == 3 + 24 * 19
    for role in ("gate", "up", "down"):
        assert types[f"blk.7.ffn_{role}_exps.weight"] == T.MXFP4
        assert types[f"blk.7.ffn_{role}_exps.bias"] == T.F32
    for name in ("token_embd.weight", "output.weight", "blk.0.attn_q.weight", "blk.23.attn_output.weight"):
        assert types[name] == T.Q8_0
    for name in ("blk.3.ffn_gate_inp.weight", "blk.3.attn_sinks.weight", "blk.3.post_attention_norm.weight"):
        assert types[name] == T.F32


def test_20b_vocab_has_harmony_specials_at_their_real_ids(header_20b):
    tokens = header_20b.metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == 201088
    assert tokens[199998] == "<|startoftext|>" and tokens[200002] == "<|return|>"
    assert tokens[200006] == "<|start|>" and tokens[200012] == "<|call|>"
    assert tokens[201087] == "<|reserved_201087|>"
    assert header_20b.metadata["tokenizer.ggml.pre"] == "gpt-4o"
    assert header_20b.metadata["tokenizer.ggml.eos_token_id"] == 200002


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("osstiny") / "gpt-oss-tiny.gguf"
    writer.write("gpt-oss-tiny", str(path), seed=3, num_threads=2)
    return path


def test_tiny_bytes_depend_on_the_seed_only_and_weights_have_sane_scales(tiny_path, tmp_path):
    again = tmp_path / "again.gguf"
    writer.write("gpt-oss-tiny", str(again), seed=3, num_threads=1)
    assert again.read_bytes() == tiny_path.read_bytes()
    gguf = GGUFFile.open(tiny_path)
    for name in ("blk.1.ffn_down_exps.weight", "blk.1.attn_v.weight"):
        info = gguf.info(name)
        values = dequantize(gguf.raw(name), info.ggml_type, info.shape[-1])
        # ~1/sqrt(fan_in) = 0.0625 for the tiny shape's 256-wide rows
        assert np.isfinite(values).all() and 0.03 < float(values.std()) < 0.12, (name, values.std())


def test_tiny_loads_in_the_cpu_engine_and_generates(tiny_path):
    from cupyserve.runtime.engine import LLMEngine
    from cupyserve.runtime.engine_args import EngineArgs
    from cupyserve.runtime.sampling_params import SamplingParams

    engine = LLMEngine(EngineArgs(model=str(tiny_path), device="cpu", pull_if_missing=False,
                                  max_model_len=256, max_num_seqs=2))
    assert engine.config.family == "gpt-oss"
    prompt = engine.tokenizer.encode("Hello world<|start|>")
    assert prompt[-1] == 32768 - 1090 + 8  # <|start|> is one special token
    engine.add_request("a", prompt, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    outputs = []
    while engine.has_unfinished():
        outputs.extend(engine.step())
    assert outputs[-1].finish_reason == "length" and outputs[-1].error is None
    assert len([t for o in outputs for t in o.token_ids]) == 4
