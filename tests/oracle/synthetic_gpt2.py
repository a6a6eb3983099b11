"""The synthetic gpt2 fixture: GPT-2's exact tensor layout, random weights, the real gpt-2 vocab.

Layout as llama.cpp's gpt2 loader reads it (src/models/gpt2.cpp) and its converter writes it:
token_embd + learned position_embd (context_length rows), per layer LayerNorm weight+bias
(attn_norm, ffn_norm), one fused attn_qkv with bias (Q, K, V rows), attn_output with bias,
ffn_up / ffn_down with biases, output_norm weight+bias, no output.weight (tied). Metadata keys
are the converter's for GPT-2 (no head_count_kv: llama.cpp defaults it to head_count).

Two mixes: `f16` (F16 matrices and position rows) and `q8_0` (every matrix, token_embd included,
as random Q8_0 blocks drawn directly, the issue's Q8_0 fixture; position rows F32, which
llama-quantize leaves unquantized). Norms and biases are F32. Everything comes from one seeded
numpy Generator, so the file is regenerated bit for bit from the seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter

GPT2_QUANTS = ("f16", "q8_0")


@dataclass(frozen=True)
class Gpt2Spec:
    n_layer: int = 3
    hidden: int = 256
    ffn: int = 1024  # GPT-2's 4 x hidden
    n_head: int = 4
    context: int = 1024
    norm_eps: float = 1e-5
    embd_std: float = 0.05  # token_embd (also the tied output) and position_embd
    logit_gain: float = 8.0  # output_norm weight: sets how peaked the next-token distribution is
    # Biases the same for every token (V's, the MLP's) add a direction shared by all positions;
    # kept small so the prediction depends on the context rather than on that direction.
    qkv_bias_std: float = 0.1
    ffn_up_bias_std: float = 0.1
    seed: int = 4
    vocab_file: str = "ggml-vocab-gpt-2.gguf"


GPT2_SPEC = Gpt2Spec()


def write_gpt2(quant: str, path: str | Path, vocab_dir: Path, copy_tokenizer) -> None:
    """Write the gpt2 fixture of mix `quant` to `path`; `copy_tokenizer(writer, vocab_path)` adds
    the tokenizer.* metadata of llama.cpp's vocab fixture and returns the vocab size."""
    from make_random_gguf import random_blocks  # tests/oracle puts benchmarks/ on sys.path

    if quant not in GPT2_QUANTS:
        raise ValueError(f"gpt2 quant {quant!r} not in {GPT2_QUANTS}")
    s = GPT2_SPEC
    rng = np.random.default_rng([s.seed, GPT2_QUANTS.index(quant)])
    w = GGUFWriter(str(path), "gpt2")
    w.add_type("model")
    w.add_name(f"synthetic-gpt2-{quant}")
    w.add_uint32("gpt2.block_count", s.n_layer)
    w.add_uint32("gpt2.context_length", s.context)
    w.add_uint32("gpt2.embedding_length", s.hidden)
    w.add_uint32("gpt2.feed_forward_length", s.ffn)
    w.add_uint32("gpt2.attention.head_count", s.n_head)
    w.add_float32("gpt2.attention.layer_norm_epsilon", s.norm_eps)
    w.add_uint32("general.file_type", {"f16": 1, "q8_0": 7}[quant])
    w.add_uint32("general.quantization_version", 2)
    vocab = copy_tokenizer(w, vocab_dir / s.vocab_file)
    qtype = T.F16 if quant == "f16" else T.Q8_0

    def matrix(name: str, rows: int, cols: int, std: float | None = None, dtype: T = qtype) -> None:
        std = cols ** -0.5 if std is None else std
        if dtype in (T.F16, T.F32):
            values = std * rng.standard_normal((rows, cols), dtype=np.float32)
            w.add_tensor(name, values.astype(np.float16 if dtype == T.F16 else np.float32))
        else:
            w.add_tensor(name, random_blocks(rng, dtype, rows, cols, std), raw_dtype=dtype)

    def vector(name: str, n: int, value: float, noise: float) -> None:
        w.add_tensor(name, (value + noise * rng.standard_normal(n)).astype(np.float32))

    # LayerNorm makes each layer's input scale-free, so the embeddings' size only sets how much
    # the input token's own row (which is also its output row, tied) shows in the final state:
    # small rows keep the model from just repeating its last token.
    matrix("token_embd.weight", vocab, s.hidden, s.embd_std)
    matrix("position_embd.weight", s.context, s.hidden, s.embd_std,
           dtype=T.F16 if quant == "f16" else T.F32)
    qkv_rows = 3 * s.hidden
    for i in range(s.n_layer):
        p = f"blk.{i}."
        vector(p + "attn_norm.weight", s.hidden, 1.0, 0.1)
        vector(p + "attn_norm.bias", s.hidden, 0.0, 0.1)
        matrix(p + "attn_qkv.weight", qkv_rows, s.hidden)
        vector(p + "attn_qkv.bias", qkv_rows, 0.0, s.qkv_bias_std)
        matrix(p + "attn_output.weight", s.hidden, s.hidden)
        vector(p + "attn_output.bias", s.hidden, 0.0, 0.1)
        vector(p + "ffn_norm.weight", s.hidden, 1.0, 0.1)
        vector(p + "ffn_norm.bias", s.hidden, 0.0, 0.1)
        matrix(p + "ffn_up.weight", s.ffn, s.hidden)
        vector(p + "ffn_up.bias", s.ffn, 0.0, s.ffn_up_bias_std)
        matrix(p + "ffn_down.weight", s.hidden, s.ffn)
        vector(p + "ffn_down.bias", s.hidden, 0.0, 0.1)
    vector("output_norm.weight", s.hidden, s.logit_gain, 0.02 * s.logit_gain)
    vector("output_norm.bias", s.hidden, 0.0, 0.1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
