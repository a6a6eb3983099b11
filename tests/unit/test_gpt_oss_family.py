"""gpt-oss family data: the YAML resolves a small GGUF's hyperparameters (head_dim 64 with
heads x 64 != hidden, experts, YaRN, sliding window), the module slides layers 0, 2, ... as
llama.cpp's set_swa_pattern(2) does, experts load as 3-D block tensors, and missing or misshaped
tensors and unsupported rope scaling fail with clear errors. Forward-pass fidelity is checked
against llama.cpp in tests/goldens/test_synthetic_families.py."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter

from cupyserve.kernels.cpu_ops import CpuOps
from cupyserve.runtime.gguf_loader import GGUFFile
from cupyserve.runtime.models import load_model, resolve_model_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oracle"))
from make_synthetic_gpt_oss_gguf import FIXTURE, SPEC  # noqa: E402

HIDDEN, FFN, HEADS, KV_HEADS, HEAD_DIM, EXPERTS, USED, VOCAB, LAYERS = 64, 32, 2, 1, 64, 4, 2, 40, 3


def write(path: Path, skip: str = "", bad_shape: str = "", metadata: dict | None = None,
          bf16: tuple[str, ...] = ()) -> Path:
    rng = np.random.default_rng(0)
    a = "gpt-oss"
    w = GGUFWriter(str(path), a)
    values = {"block_count": LAYERS, "context_length": 1024, "embedding_length": HIDDEN,
              "expert_feed_forward_length": FFN, "attention.head_count": HEADS,
              "attention.head_count_kv": KV_HEADS, "attention.key_length": HEAD_DIM,
              "attention.sliding_window": 8, "expert_count": EXPERTS, "expert_used_count": USED}
    for key, value in values.items():
        w.add_uint32(f"{a}.{key}", value)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_string(f"{a}.rope.scaling.type", "yarn")
    w.add_float32(f"{a}.rope.scaling.factor", 16.0)
    w.add_uint32(f"{a}.rope.scaling.original_context_length", 64)
    for key, value in (metadata or {}).items():
        w.add_key_value(f"{a}.{key}", *value)
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    tensors = {"token_embd.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,),
               "output.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"blk.{i}."
        tensors.update({
            p + "attn_norm.weight": (HIDDEN,), p + "post_attention_norm.weight": (HIDDEN,),
            p + "attn_q.weight": (q, HIDDEN), p + "attn_k.weight": (kv, HIDDEN),
            p + "attn_v.weight": (kv, HIDDEN), p + "attn_q.bias": (q,), p + "attn_k.bias": (kv,),
            p + "attn_v.bias": (kv,), p + "attn_output.weight": (HIDDEN, q),
            p + "attn_output.bias": (HIDDEN,), p + "attn_sinks.weight": (HEADS,),
            p + "ffn_gate_inp.weight": (EXPERTS, HIDDEN), p + "ffn_gate_inp.bias": (EXPERTS,),
            p + "ffn_gate_exps.weight": (EXPERTS, FFN, HIDDEN), p + "ffn_gate_exps.bias": (EXPERTS, FFN),
            p + "ffn_up_exps.weight": (EXPERTS, FFN, HIDDEN), p + "ffn_up_exps.bias": (EXPERTS, FFN),
            p + "ffn_down_exps.weight": (EXPERTS, HIDDEN, FFN), p + "ffn_down_exps.bias": (EXPERTS, HIDDEN),
        })
    for name, shape in tensors.items():
        if name == skip:
            continue
        if name == bad_shape:
            shape = (shape[0] + 1, *shape[1:])
        values = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        if name in bf16:  # truncated to bfloat16 bits
            w.add_tensor(name, (values.view(np.uint32) >> 16).astype(np.uint16), raw_dtype=T.BF16)
        else:
            w.add_tensor(name, values)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_hyperparameters_and_switches_resolve(tmp_path):
    config, family, _ = resolve_model_config(GGUFFile.open(write(tmp_path / "g.gguf")))
    assert family.family == "gpt-oss" and config.rope_style == "neox" and config.norm == "rms"
    assert (config.head_dim, config.num_heads, config.num_kv_heads) == (HEAD_DIM, HEADS, KV_HEADS)
    assert config.q_size == 128 != config.hidden_size == HIDDEN
    assert config.ffn_size == FFN and config.rope_dim == HEAD_DIM and config.rope_theta == 150000.0
    assert config.attention_scale == pytest.approx(HEAD_DIM**-0.5)
    extra = config.extra
    assert (extra["num_experts"], extra["num_experts_used"], extra["sliding_window"]) == (EXPERTS, USED, 8)
    assert extra["rope_scaling_type"] == "yarn" and extra["rope_scaling_factor"] == 16.0
    assert extra["rope_original_context"] == 64
    assert (extra["rope_yarn_beta_fast"], extra["rope_yarn_beta_slow"]) == (32.0, 1.0)


def test_model_slides_even_layers_and_loads_experts(tmp_path):
    model = load_model(GGUFFile.open(write(tmp_path / "g.gguf")), CpuOps())
    assert model.is_sliding == [True, False, True]
    options = [model.attention_options(layer) for layer in model.layers]
    assert [o["sliding_window"] for o in options] == [8, 0, 8]
    assert all(o["sinks"].shape == (HEADS,) for o in options)
    assert model.yarn.factor == 16.0 and model.yarn.original_context == 64
    assert model.rope_scaling_options(0) == {"yarn": model.yarn}
    layer = model.layers[1]
    gate = layer["ffn_gate_exps"]
    assert (gate.num_experts, gate.out_features, gate.in_features) == (EXPERTS, FFN, HIDDEN)
    down = layer["ffn_down_exps"]
    assert (down.num_experts, down.out_features, down.in_features) == (EXPERTS, HIDDEN, FFN)
    assert layer["ffn_down_exps_bias"].shape == (EXPERTS, HIDDEN)
    assert layer["attn_output_bias"].shape == (HIDDEN,)
    assert not model.is_output_tied


def test_sliding_pattern_from_metadata(tmp_path):
    from gguf import GGUFValueType

    path = write(tmp_path / "g.gguf", metadata={
        "attention.sliding_window_pattern": ([False, True, True], GGUFValueType.ARRAY)})
    assert load_model(GGUFFile.open(path), CpuOps()).is_sliding == [False, True, True]


@pytest.mark.parametrize("name", ["blk.1.attn_sinks.weight", "blk.2.ffn_down_exps.bias", "output.weight"])
def test_missing_tensor_names_it(tmp_path, name):
    with pytest.raises(Exception, match=name.replace(".", r"\.")):
        resolve_model_config(GGUFFile.open(write(tmp_path / "g.gguf", skip=name)))


@pytest.mark.parametrize("name", ["blk.0.ffn_up_exps.weight", "blk.1.attn_q.weight"])
def test_misshaped_tensor_names_it(tmp_path, name):
    with pytest.raises(Exception, match=name.replace(".", r"\.")):
        resolve_model_config(GGUFFile.open(write(tmp_path / "g.gguf", bad_shape=name)))


def test_unsupported_rope_scaling_is_refused(tmp_path):
    from gguf import GGUFValueType

    path = write(tmp_path / "g.gguf", metadata={"rope.scaling.type": ("linear", GGUFValueType.STRING)})
    with pytest.raises(ValueError, match="rope scaling type 'linear'"):
        load_model(GGUFFile.open(path), CpuOps())


def test_committed_fixture_layout():
    gguf_file = GGUFFile.open(FIXTURE)
    config, _, _ = resolve_model_config(gguf_file)
    assert (config.num_layers, config.hidden_size, config.head_dim) == (SPEC.n_layer, SPEC.hidden, 64)
    types = {name: T(info.ggml_type) for name, info in gguf_file.tensors.items()}
    assert types["blk.0.ffn_gate_exps.weight"] == T.MXFP4 and types["blk.0.ffn_down_exps.weight"] == T.MXFP4
    assert types["token_embd.weight"] == T.Q8_0 and types["blk.0.ffn_gate_inp.weight"] == T.F32
    model = load_model(gguf_file, CpuOps())
    assert model.is_sliding == [True, False, True] and model.sliding_window == 16
    assert model.yarn.magnitude == pytest.approx(1 + 0.1 * math.log(32.0))


def test_bf16_vectors_load_as_their_values(tmp_path):
    names = ("blk.0.attn_sinks.weight", "blk.0.ffn_up_exps.bias")
    plain = load_model(GGUFFile.open(write(tmp_path / "f32.gguf")), CpuOps())
    model = load_model(GGUFFile.open(write(tmp_path / "bf16.gguf", bf16=names)), CpuOps())
    for role in ("attn_sinks", "ffn_up_exps_bias"):
        want = plain.layers[0][role]
        got = model.layers[0][role]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=2**-7, atol=0)  # bfloat16 keeps 8 bits
