"""gpt2 family without a real model: the YAML resolves a small GPT-2-layout GGUF (no rope, no
head_count_kv key), the tensors load with their biases and a tied output, a missing bias or a
misshaped position table fails with its name, an unknown architecture lists gpt2, and the forward
pass equals a plain float64 GPT-2 written here from the architecture's definition, and the gpt-2
vocabulary adds no BOS unless the file asks for one (llama.cpp's rule)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from cupyserve.kernels.batch import AttentionBatch
from cupyserve.kernels.cpu_ops import CpuOps
from cupyserve.runtime.gguf_loader import GGUFFile
from cupyserve.runtime.gguf_metadata import read_metadata
from cupyserve.runtime.models import load_model, resolve_model_config, supported_architectures
from cupyserve.runtime.models.family import family_for_architecture
from cupyserve.runtime.tokenizer import Tokenizer
from testdata import shared_dir

HIDDEN, FFN, HEADS, VOCAB, CONTEXT, LAYERS, EPS = 64, 256, 4, 40, 32, 2, 1e-5
HEAD_DIM = HIDDEN // HEADS


def gpt2_tensors() -> dict[str, tuple[int, ...]]:
    tensors = {"token_embd.weight": (VOCAB, HIDDEN), "position_embd.weight": (CONTEXT, HIDDEN),
               "output_norm.weight": (HIDDEN,), "output_norm.bias": (HIDDEN,)}
    for i in range(LAYERS):
        p = f"blk.{i}."
        tensors.update({p + "attn_norm.weight": (HIDDEN,), p + "attn_norm.bias": (HIDDEN,),
                        p + "attn_qkv.weight": (3 * HIDDEN, HIDDEN), p + "attn_qkv.bias": (3 * HIDDEN,),
                        p + "attn_output.weight": (HIDDEN, HIDDEN), p + "attn_output.bias": (HIDDEN,),
                        p + "ffn_norm.weight": (HIDDEN,), p + "ffn_norm.bias": (HIDDEN,),
                        p + "ffn_up.weight": (FFN, HIDDEN), p + "ffn_up.bias": (FFN,),
                        p + "ffn_down.weight": (HIDDEN, FFN), p + "ffn_down.bias": (HIDDEN,)})
    return tensors


def write(path: Path, skip: str = "", bad_shape: str = "",
          extra: dict | None = None) -> dict[str, np.ndarray]:
    """A GPT-2-layout GGUF with float32 random weights (exact on the CPU: no activation rounding);
    returns the weights by name."""
    rng = np.random.default_rng(6)
    w = GGUFWriter(str(path), "gpt2")
    w.add_uint32("gpt2.block_count", LAYERS)
    w.add_uint32("gpt2.context_length", CONTEXT)
    w.add_uint32("gpt2.embedding_length", HIDDEN)
    w.add_uint32("gpt2.feed_forward_length", FFN)
    w.add_uint32("gpt2.attention.head_count", HEADS)
    w.add_float32("gpt2.attention.layer_norm_epsilon", EPS)
    weights = {}
    for name, shape in {**gpt2_tensors(), **(extra or {})}.items():
        if name == skip:
            continue
        if name == bad_shape:
            shape = (shape[0] + 1, *shape[1:])
        center = 1.0 if name.endswith("norm.weight") else 0.0
        weights[name] = (center + 0.3 * rng.standard_normal(shape)).astype(np.float32)
        w.add_tensor(name, weights[name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return weights


def naive_gpt2(weights: dict[str, np.ndarray], token_ids: list[int]) -> np.ndarray:  # [n, vocab]
    """GPT-2 in float64, from its definition (pre-LayerNorm blocks, causal MHA, tanh-GELU)."""
    W = {k: v.astype(np.float64) for k, v in weights.items()}

    def layer_norm(x, prefix):
        centered = x - x.mean(-1, keepdims=True)
        normed = centered / np.sqrt((centered**2).mean(-1, keepdims=True) + EPS)
        return normed * W[prefix + ".weight"] + W[prefix + ".bias"]

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    n = len(token_ids)
    x = W["token_embd.weight"][token_ids] + W["position_embd.weight"][:n]
    causal = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(LAYERS):
        p = f"blk.{i}."
        qkv = layer_norm(x, p + "attn_norm") @ W[p + "attn_qkv.weight"].T + W[p + "attn_qkv.bias"]
        q, k, v = (qkv[:, j * HIDDEN:(j + 1) * HIDDEN].reshape(n, HEADS, HEAD_DIM).transpose(1, 0, 2)
                   for j in range(3))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(HEAD_DIM) + causal
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attended = (probs @ v).transpose(1, 0, 2).reshape(n, HIDDEN)
        x = x + attended @ W[p + "attn_output.weight"].T + W[p + "attn_output.bias"]
        up = layer_norm(x, p + "ffn_norm") @ W[p + "ffn_up.weight"].T + W[p + "ffn_up.bias"]
        x = x + gelu(up) @ W[p + "ffn_down.weight"].T + W[p + "ffn_down.bias"]
    return layer_norm(x, "output_norm") @ W["token_embd.weight"].T


def prefill_batch(num_tokens: int, block_size: int) -> AttentionBatch:
    num_blocks = -(-num_tokens // block_size)
    no_generated = np.zeros(num_tokens, dtype=bool)
    return AttentionBatch(query_start=np.array([0, num_tokens], dtype=np.int32),
                          context_lens=np.array([num_tokens], dtype=np.int32),
                          block_tables=np.arange(num_blocks, dtype=np.int32)[None, :],
                          slot_mapping=np.arange(num_tokens, dtype=np.int64),
                          positions=np.arange(num_tokens, dtype=np.int32), num_seqs=1,
                          max_query_len=num_tokens, max_context_len=num_tokens,
                          query_start_host=(0, num_tokens), context_lens_host=(num_tokens,),
                          generated_rows=no_generated, logits_generated_rows=no_generated)


def test_gpt2_resolves_layer_norm_gelu_no_rope_mha(tmp_path):
    config, family, _ = resolve_model_config(GGUFFile.open(_written(tmp_path)))
    assert family.family == "gpt2"
    assert (config.norm, config.activation, config.rope_style) == ("layer", "gelu", "none")
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (HEADS, HEADS, HEAD_DIM)
    assert (config.context_length, config.norm_eps) == (CONTEXT, pytest.approx(EPS))


def test_gpt2_loads_biases_positions_and_ties_the_output(tmp_path):
    model = load_model(GGUFFile.open(_written(tmp_path)), CpuOps())
    assert model.is_output_tied and model.output is model.token_embd
    assert model.position_embd.matrix.shape == (CONTEXT, HIDDEN)
    assert model.output_norm_bias.shape == (HIDDEN,)
    layer = model.layers[1]
    assert layer["attn_qkv"].matrix.shape == (3 * HIDDEN, HIDDEN)
    assert layer["attn_qkv_bias"].shape == (3 * HIDDEN,)
    for role, size in [("attn_norm_bias", HIDDEN), ("attn_output_bias", HIDDEN), ("ffn_norm_bias", HIDDEN),
                       ("ffn_up_bias", FFN), ("ffn_down_bias", HIDDEN)]:
        assert layer[role].shape == (size,), role


def test_gpt2_untied_output_is_used_when_present(tmp_path):
    path = tmp_path / "g.gguf"
    write(path, extra={"output.weight": (VOCAB, HIDDEN)})
    model = load_model(GGUFFile.open(path), CpuOps())
    assert not model.is_output_tied and model.output is not model.token_embd


@pytest.mark.parametrize("skip", ["blk.1.ffn_up.bias", "output_norm.bias", "position_embd.weight"])
def test_gpt2_missing_tensor_is_named(tmp_path, skip):
    path = tmp_path / "g.gguf"
    write(path, skip=skip)
    with pytest.raises(Exception, match=skip.replace(".", r"\.")):
        resolve_model_config(GGUFFile.open(path))


def test_gpt2_position_table_must_match_context_length(tmp_path):
    path = tmp_path / "g.gguf"
    write(path, bad_shape="position_embd.weight")
    with pytest.raises(Exception, match=r"position_embd\.weight"):
        resolve_model_config(GGUFFile.open(path))


def test_gpt2_forward_matches_float64_definition(tmp_path):
    path = tmp_path / "g.gguf"
    weights = write(path)
    model = load_model(GGUFFile.open(path), CpuOps())
    token_ids = np.array([3, 17, 17, 0, 39, 5, 22, 8, 11, 2, 30, 30, 1, 9, 14, 26, 7, 33, 4, 12],
                         dtype=np.int32)
    block_size = 8
    num_blocks = -(-len(token_ids) // block_size)
    kv_caches = [(np.zeros((num_blocks, block_size, HEADS, HEAD_DIM), np.float16),
                  np.zeros((num_blocks, block_size, HEADS, HEAD_DIM), np.float16)) for _ in range(LAYERS)]
    logits = model.forward(token_ids, prefill_batch(len(token_ids), block_size), kv_caches,
                           np.arange(len(token_ids)))
    expected = naive_gpt2(weights, token_ids.tolist())
    # The KV cache is fp16 (relative rounding 2^-11), everything else float32. Measured 6.6e-4;
    # leaving out any one bias gives more than 0.04.
    assert np.abs(logits - expected).max() < 5e-3 * np.abs(expected).max()
    assert (logits.argmax(-1) == expected.argmax(-1)).mean() >= 0.9


def test_gpt2_input_is_token_plus_position_row(tmp_path):
    path = tmp_path / "g.gguf"
    weights = write(path)
    model = load_model(GGUFFile.open(path), CpuOps())
    hidden = model.input_embeddings(np.array([7, 7, 2], dtype=np.int32), np.array([0, 5, 31], dtype=np.int32))
    expected = weights["token_embd.weight"][[7, 7, 2]] + weights["position_embd.weight"][[0, 5, 31]]
    np.testing.assert_array_equal(hidden, expected)


def test_unknown_architecture_lists_gpt2():
    assert "gpt2" in supported_architectures()
    assert family_for_architecture("gpt2").module == "gpt2"
    with pytest.raises(ValueError, match=r"unsupported model architecture 'gpt-j'.*gpt2"):
        family_for_architecture("gpt-j")


def test_gpt2_vocab_adds_no_bos_unless_the_file_asks():
    metadata = read_metadata(str(shared_dir() / "vocab" / "ggml-vocab-gpt-2.gguf"))
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    endoftext = metadata["tokenizer.ggml.tokens"].index("<|endoftext|>")
    assert (tokenizer.bos_id, tokenizer.add_bos) == (endoftext, False)
    assert endoftext in tokenizer.eos_ids
    assert tokenizer.encode("Hello world") == tokenizer.encode("Hello world", add_special_tokens=False)
    asks = Tokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.add_bos_token": True})
    assert asks.encode("Hello world") == [endoftext, *tokenizer.encode("Hello world")]


def _written(tmp_path: Path) -> Path:
    path = tmp_path / "g.gguf"
    write(path)
    return path
