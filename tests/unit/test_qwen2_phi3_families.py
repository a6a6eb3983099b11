"""qwen2 and phi3 family data without a real model: the YAMLs resolve a small GGUF's
hyperparameters and tensors, misshaped or missing tensors fail with their names, phi3's fused
ffn_up feeds the gated MLP, and phi3's 128k rope factors are refused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from cupyserve.kernels.cpu_ops import CpuOps
from cupyserve.runtime.gguf_loader import GGUFFile
from cupyserve.runtime.models import load_model, resolve_model_config
from cupyserve.runtime.models.family import family_for_architecture

HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 64, 96, 4, 2, 40
HEAD_DIM = HIDDEN // HEADS


def write(path: Path, arch: str, skip: str = "", bad_shape: str = "", extra: dict | None = None) -> Path:
    rng = np.random.default_rng(0)
    w = GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.block_count", 1)
    w.add_uint32(f"{arch}.context_length", 256)
    w.add_uint32(f"{arch}.embedding_length", HIDDEN)
    w.add_uint32(f"{arch}.feed_forward_length", FFN)
    w.add_uint32(f"{arch}.attention.head_count", HEADS)
    w.add_uint32(f"{arch}.attention.head_count_kv", KV_HEADS)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    if arch == "phi3":
        w.add_uint32(f"{arch}.rope.dimension_count", HEAD_DIM // 2)
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    tensors = {"token_embd.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,),
               "blk.0.attn_norm.weight": (HIDDEN,), "blk.0.ffn_norm.weight": (HIDDEN,),
               "blk.0.attn_output.weight": (HIDDEN, q), "blk.0.ffn_down.weight": (HIDDEN, FFN)}
    if arch == "qwen2":
        tensors.update({"blk.0.attn_q.weight": (q, HIDDEN), "blk.0.attn_k.weight": (kv, HIDDEN),
                        "blk.0.attn_v.weight": (kv, HIDDEN), "blk.0.attn_q.bias": (q,),
                        "blk.0.attn_k.bias": (kv,), "blk.0.attn_v.bias": (kv,),
                        "blk.0.ffn_gate.weight": (FFN, HIDDEN), "blk.0.ffn_up.weight": (FFN, HIDDEN)})
    else:
        tensors.update({"output.weight": (VOCAB, HIDDEN), "blk.0.attn_qkv.weight": (q + 2 * kv, HIDDEN),
                        "blk.0.ffn_up.weight": (2 * FFN, HIDDEN)})
    tensors.update(extra or {})
    for name, shape in tensors.items():
        if name == skip:
            continue
        if name == bad_shape:
            shape = (shape[0] + 1, *shape[1:])
        w.add_tensor(name, (0.1 * rng.standard_normal(shape)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_qwen2_resolves_with_biases_neox_and_tied_output(tmp_path):
    config, family, _ = resolve_model_config(GGUFFile.open(write(tmp_path / "q.gguf", "qwen2")))
    assert (family.family, config.rope_style, config.rope_dim, config.head_dim) == ("qwen2", "neox", 16, 16)
    assert config.rope_theta == 1000000.0  # Qwen2's base when the file gives none
    model = load_model(GGUFFile.open(tmp_path / "q.gguf"), CpuOps())
    assert model.is_output_tied
    assert model.layers[0].get("attn_qkv_bias").shape == (HIDDEN + 2 * KV_HEADS * HEAD_DIM,)


def test_qwen2_biases_are_required(tmp_path):
    with pytest.raises(Exception, match=r"blk\.0\.attn_k\.bias"):
        resolve_model_config(GGUFFile.open(write(tmp_path / "q.gguf", "qwen2", skip="blk.0.attn_k.bias")))


def test_phi3_fused_tensors_partial_rope_untied(tmp_path):
    config, family, _ = resolve_model_config(GGUFFile.open(write(tmp_path / "p.gguf", "phi3")))
    assert (family.family, config.rope_style, config.rope_dim, config.head_dim) == ("phi3", "neox", 8, 16)
    model = load_model(GGUFFile.open(tmp_path / "p.gguf"), CpuOps())
    assert not model.is_output_tied
    layer = model.layers[0]
    assert "ffn_gate_up" in layer.tensors and "ffn_up" not in layer.tensors


@pytest.mark.parametrize("name", ["blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"])
def test_phi3_misshaped_fused_tensor_names_it(tmp_path, name):
    with pytest.raises(Exception, match=name.replace(".", r"\.")):
        resolve_model_config(GGUFFile.open(write(tmp_path / "p.gguf", "phi3", bad_shape=name)))


def test_phi3_128k_rope_factors_are_refused(tmp_path):
    path = write(tmp_path / "p.gguf", "phi3", extra={"rope_factors_long.weight": (HEAD_DIM // 4,)})
    with pytest.raises(ValueError, match="rope_factors_long"):
        load_model(GGUFFile.open(path), CpuOps())


def test_families_are_registered():
    assert family_for_architecture("qwen2").module == "qwen2"
    assert family_for_architecture("phi3").module == "phi3"
