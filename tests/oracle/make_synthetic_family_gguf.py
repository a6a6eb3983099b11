"""Small synthetic GGUFs of the qwen2, phi3 and gpt2 families, for checking them against llama.cpp.

No Qwen2.5 or Phi-3 weights can be downloaded here, so each fixture is a few-layer model of the
family's exact layout (qwen2: separate Q/K/V with biases, tied output; phi3: fused attn_qkv,
gate+up fused in ffn_up, rope over part of each head, untied output) with random weights and the
family's real tokenizer metadata copied from llama.cpp's vocab fixtures
(../shared/vocab/ggml-vocab-{qwen2,phi-3}.gguf, full vocabularies).

Quantized tensors are written as random blocks of the target type directly (the file llama.cpp
reads is the file we generate), in three mixes: `f16`, `q4_0` (llama-quantize's Q4_0 recipe:
Q4_0 matrices, Q6_K output) and `q4_k_m` (Q4_K matrices, Q6_K for attn_v/ffn_down in the layers
llama.cpp's use_more_bits picks and for the output). Everything is drawn from a seeded
numpy Generator, so the test regenerates the very file the oracle recorded (checked through
`content_hash`, which the goldens carry); nothing large is committed.

The output norm is scaled (`logit_gain`) so the next-token distribution is far from uniform:
llama.cpp's top-1 probability is mostly well above 0.3, and greedy steps are rarely near ties.

gpt2 (learned positions, LayerNorm, biases everywhere; mixes `f16` and `q8_0`) is written by
synthetic_gpt2.py beside this file.

    python tests/oracle/make_synthetic_family_gguf.py qwen2 q4_k_m /tmp/qwen2-q4_k_m.gguf
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType, GGUFWriter

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from make_random_gguf import random_blocks, use_more_bits  # noqa: E402

from cupyserve.runtime.gguf_header import HeaderCursor, read_key_values  # noqa: E402
from cupyserve.runtime.gguf_loader import GGUFFile  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_gpt2 import GPT2_QUANTS, write_gpt2  # noqa: E402

VOCAB_DIR = Path(os.environ.get("CUPYSERVE_VOCAB_DIR", REPO.parent / "shared" / "vocab"))
QUANTS = ("f16", "q4_0", "q4_k_m")  # of qwen2 and phi3; the index seeds the generator


@dataclass(frozen=True)
class Spec:
    arch: str
    vocab_file: str
    n_layer: int
    hidden: int
    ffn: int
    n_head: int
    n_kv_head: int
    head_dim: int
    rope_dim: int
    rope_base: float
    rms_eps: float
    context: int
    tied: bool
    qkv_bias: bool
    fused: bool  # phi3: attn_qkv and gate+up in ffn_up
    logit_gain: float  # output_norm weight: the scale of the logits
    seed: int
    embd_std: float = 1.0  # token_embd (and the tied output)


SPECS = {
    "qwen2": Spec("qwen2", "ggml-vocab-qwen2.gguf", n_layer=2, hidden=256, ffn=512, n_head=4,
                  n_kv_head=2, head_dim=64, rope_dim=64, rope_base=1000000.0, rms_eps=1e-6,
                  context=4096, tied=True, qkv_bias=True, fused=False, logit_gain=12.0, seed=2,
                  embd_std=0.05),
    "phi3": Spec("phi3", "ggml-vocab-phi-3.gguf", n_layer=3, hidden=256, ffn=512, n_head=4,
                 n_kv_head=2, head_dim=64, rope_dim=32, rope_base=10000.0, rms_eps=1e-5,
                 context=4096, tied=False, qkv_bias=False, fused=True, logit_gain=0.6, seed=3),
}


FAMILIES = (*sorted(SPECS), "gpt2")


def read_metadata(path: Path) -> tuple[dict, dict]:
    """(values, GGUF value types) of a GGUF's metadata (the project's fast header reader)."""
    data = path.read_bytes()
    cursor = HeaderCursor(data, len(data), str(path))
    cursor.u32(), cursor.u32(), cursor.u64()  # magic, version, tensor count
    return read_key_values(cursor, cursor.u64())


_ITEM_TYPES = {str: GGUFValueType.STRING, float: GGUFValueType.FLOAT32, int: GGUFValueType.INT32,
               bool: GGUFValueType.BOOL}


def copy_tokenizer(writer: GGUFWriter, vocab_path: Path) -> int:
    """Every tokenizer.* key of llama.cpp's vocab fixture, with its GGUF types; the vocab size."""
    values, types = read_metadata(vocab_path)
    for key, value in values.items():
        if not key.startswith("tokenizer."):
            continue
        if types[key] == GGUFValueType.ARRAY:
            writer.add_key_value(key, value, GGUFValueType.ARRAY, sub_type=_ITEM_TYPES[type(value[0])])
        else:
            writer.add_key_value(key, value, types[key])
    return len(values["tokenizer.ggml.tokens"])


def layer_types(quant: str, layer: int, n_layer: int) -> dict[str, T]:
    if quant == "f16":
        return dict.fromkeys(("q", "k", "v", "qkv", "o", "gate", "up", "down"), T.F16)
    if quant == "q4_0":
        return dict.fromkeys(("q", "k", "v", "qkv", "o", "gate", "up", "down"), T.Q4_0)
    more = use_more_bits(layer, n_layer)
    types = dict.fromkeys(("q", "k", "v", "qkv", "o", "gate", "up", "down"), T.Q4_K)
    if more:
        types["v"] = types["down"] = T.Q6_K
    return types


def quants_of(family: str) -> tuple[str, ...]:
    """The quant mixes a family's fixture comes in."""
    return GPT2_QUANTS if family == "gpt2" else QUANTS


def write(family: str, quant: str, path: str | Path) -> str:
    """Write the fixture; returns its content hash."""
    if family == "gpt2":
        write_gpt2(quant, path, VOCAB_DIR, copy_tokenizer)
        return content_hash(path)
    s = SPECS[family]
    if quant not in QUANTS:
        raise ValueError(f"quant {quant!r} not in {QUANTS}")
    rng = np.random.default_rng([s.seed, QUANTS.index(quant)])
    a = s.arch
    w = GGUFWriter(str(path), a)
    w.add_type("model")
    w.add_name(f"synthetic-{family}-{quant}")
    w.add_uint32(f"{a}.block_count", s.n_layer)
    w.add_uint32(f"{a}.context_length", s.context)
    w.add_uint32(f"{a}.embedding_length", s.hidden)
    w.add_uint32(f"{a}.feed_forward_length", s.ffn)
    w.add_uint32(f"{a}.attention.head_count", s.n_head)
    w.add_uint32(f"{a}.attention.head_count_kv", s.n_kv_head)
    w.add_float32(f"{a}.rope.freq_base", s.rope_base)
    w.add_uint32(f"{a}.rope.dimension_count", s.rope_dim)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", s.rms_eps)
    w.add_uint32("general.file_type", {"f16": 1, "q4_0": 2, "q4_k_m": 15}[quant])
    w.add_uint32("general.quantization_version", 2)
    vocab = copy_tokenizer(w, VOCAB_DIR / s.vocab_file)

    def matrix(name: str, qtype: T, rows: int, cols: int, std: float | None = None) -> None:
        std = cols ** -0.5 if std is None else std
        if qtype == T.F16:
            data = (std * rng.standard_normal((rows, cols), dtype=np.float32)).astype(np.float16)
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, random_blocks(rng, qtype, rows, cols, std), raw_dtype=qtype)

    def vector(name: str, n: int, value: float = 1.0, noise: float = 0.1) -> None:
        w.add_tensor(name, (value + noise * rng.standard_normal(n)).astype(np.float32))

    out_type = T.F16 if quant == "f16" else T.Q6_K
    embd_type = {"f16": T.F16, "q4_0": T.Q4_0, "q4_k_m": T.Q4_K}[quant]
    q_dim, kv_dim = s.n_head * s.head_dim, s.n_kv_head * s.head_dim
    # Each layer's input is RMS-normed, so the embeddings' scale matters only against the layers'
    # outputs in the residual stream; a tied model gets small ones (embd_std), or the input
    # token's own row dominates the logits and every prompt just repeats its last token.
    matrix("token_embd.weight", out_type if s.tied else embd_type, vocab, s.hidden, s.embd_std)
    for i in range(s.n_layer):
        t = layer_types(quant, i, s.n_layer)
        p = f"blk.{i}."
        vector(p + "attn_norm.weight", s.hidden)
        if s.fused:
            matrix(p + "attn_qkv.weight", t["qkv"], q_dim + 2 * kv_dim, s.hidden)
        else:
            matrix(p + "attn_q.weight", t["q"], q_dim, s.hidden)
            matrix(p + "attn_k.weight", t["k"], kv_dim, s.hidden)
            matrix(p + "attn_v.weight", t["v"], kv_dim, s.hidden)
        if s.qkv_bias:
            vector(p + "attn_q.bias", q_dim, 0.0, 0.5)
            vector(p + "attn_k.bias", kv_dim, 0.0, 0.5)
            vector(p + "attn_v.bias", kv_dim, 0.0, 0.5)
        matrix(p + "attn_output.weight", t["o"], s.hidden, q_dim)
        vector(p + "ffn_norm.weight", s.hidden)
        if s.fused:
            matrix(p + "ffn_up.weight", t["up"], 2 * s.ffn, s.hidden)
        else:
            matrix(p + "ffn_gate.weight", t["gate"], s.ffn, s.hidden)
            matrix(p + "ffn_up.weight", t["up"], s.ffn, s.hidden)
        matrix(p + "ffn_down.weight", t["down"], s.hidden, s.ffn)
    vector("output_norm.weight", s.hidden, s.logit_gain, 0.02)
    if not s.tied:
        matrix("output.weight", out_type, vocab, s.hidden, 1.0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return content_hash(path)


def content_hash(path: str | Path) -> str:
    """sha256 over the metadata values and the tensors (name, type, shape, bytes), independent of
    how a gguf package version lays out the header."""
    gguf_file = GGUFFile.open(path)
    h = hashlib.sha256()
    for key in sorted(gguf_file.metadata):
        if key != "general.alignment":
            h.update(f"{key}={gguf_file.metadata[key]!r}".encode("utf-8", "surrogateescape"))
    for name in sorted(gguf_file.tensors):
        info = gguf_file.tensors[name]
        h.update(f"{name}:{int(info.ggml_type)}:{list(info.shape)}".encode())
        h.update(gguf_file.raw(name).tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=FAMILIES)
    parser.add_argument("quant", choices=sorted(set(QUANTS) | set(GPT2_QUANTS)))
    parser.add_argument("path")
    args = parser.parse_args(argv)
    if args.quant not in quants_of(args.family):
        parser.error(f"{args.family} comes in {', '.join(quants_of(args.family))}")
    print(write(args.family, args.quant, args.path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
