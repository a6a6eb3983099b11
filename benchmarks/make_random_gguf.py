"""Write a random-weight GGUF with the tensor layout and metadata of a real model, for benchmarks.

Throughput depends on shapes and block formats, not on the weights' values, so a file of random
quantized blocks with sane scales (weights of standard deviation ~1/sqrt(fan_in), so activations
stay finite over every layer) measures the same as the real model, and can be written on a
machine the real file cannot be copied to. The tokenizer is a synthetic byte-level BPE vocab of
the real size (3 control tokens, 256 byte tokens, then one token per merge, merges consistent),
so both cupyserve and llama.cpp load it; prompts for benchmarks are token ids anyway.

    python benchmarks/make_random_gguf.py smollm2-135m-q4_1 /tmp/smollm2-random.gguf

Shapes: smollm2-135m-q4_1 (the real SmolLM2-135M-Instruct Q4_1 layout: Q4_1 layer matrices,
Q8_0 tied token_embd, F32 norms), qwen2.5-0.5b-q4_k, llama3.2-1b-q4_k and llama3.1-8b-q4_k (llama.cpp's Q4_K_M
recipe: Q4_K, Q6_K for attn_v/ffn_down in the layers use_more_bits picks and for the
output/embedding, and the Q5_0/Q8_0 fallbacks where a row is not a multiple of 256).
Needs numpy and the gguf package only.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter


@dataclass(frozen=True)
class Shape:
    arch: str
    n_layer: int
    hidden: int
    ffn: int
    n_head: int
    n_kv_head: int
    head_dim: int
    vocab: int
    rope_base: float
    rms_eps: float
    context: int
    layer_type: T  # attn q/k/v/o, ffn gate/up/down unless overridden
    embd_type: T
    tied: bool = True
    qkv_bias: bool = False
    q4_k_m: bool = False  # Q6_K for attn_v/ffn_down in use_more_bits layers, k-quant fallbacks
    special: tuple = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    bos: int = 1
    eos: int = 2
    extra: dict = field(default_factory=dict)


SHAPES = {
    "smollm2-135m-q4_1": Shape("llama", 30, 576, 1536, 9, 3, 64, 49152, 100000.0, 1e-5, 8192,
                               T.Q4_1, T.Q8_0),
    "qwen2.5-0.5b-q4_k": Shape("qwen2", 24, 896, 4864, 14, 2, 64, 151936, 1000000.0, 1e-6, 32768,
                               T.Q4_K, T.Q8_0, qkv_bias=True, q4_k_m=True,
                               special=("<|endoftext|>", "<|im_start|>", "<|im_end|>"), bos=0, eos=2),
    "llama3.2-1b-q4_k": Shape("llama", 16, 2048, 8192, 32, 8, 64, 128256, 500000.0, 1e-5, 131072,
                              T.Q4_K, T.Q6_K, q4_k_m=True,
                              special=("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"),
                              bos=0, eos=2),
    # Llama-3.1-8B Q4_K_M: untied Q6_K output, Q4_K token_embd (no rope_freqs: speed only).
    "llama3.1-8b-q4_k": Shape("llama", 32, 4096, 14336, 32, 8, 128, 128256, 500000.0, 1e-5, 131072,
                              T.Q4_K, T.Q4_K, tied=False, q4_k_m=True,
                              special=("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"),
                              bos=0, eos=2),
}

BLOCK = {T.Q4_0: (32, 18), T.Q4_1: (32, 20), T.Q5_0: (32, 22), T.Q8_0: (32, 34),
         T.Q4_K: (256, 144), T.Q6_K: (256, 210)}


def _fp16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).view(np.uint8).reshape(*values.shape, 2)


def random_blocks(rng: np.random.Generator, qtype: T, rows: int, cols: int, std: float) -> np.ndarray:
    """(rows, bytes_per_row) uint8 of random blocks whose dequantized values have about `std`."""
    per_block, nbytes = BLOCK[qtype]
    if cols % per_block:
        raise ValueError(f"{qtype.name} needs rows of a multiple of {per_block}, got {cols}")
    nb = rows * (cols // per_block)
    out = rng.integers(0, 256, size=(nb, nbytes), dtype=np.uint8)  # the quants: random bytes
    jitter = rng.uniform(0.75, 1.25, size=nb)
    if qtype == T.Q4_0:  # d * (q - 8), q uniform 0..15: std 4.6 d
        out[:, 0:2] = _fp16_bytes(std / 4.6 * jitter)
    elif qtype == T.Q4_1:  # d * q + m, m = -8 d keeps the mean near 0
        d = std / 4.6 * jitter
        out[:, 0:2] = _fp16_bytes(d)
        out[:, 2:4] = _fp16_bytes(-7.5 * d)
    elif qtype == T.Q5_0:  # d * (q - 16), q uniform 0..31: std 9.2 d
        out[:, 0:2] = _fp16_bytes(std / 9.2 * jitter)
    elif qtype == T.Q8_0:  # d * q, q uniform int8: std 73.6 d
        out[:, 0:2] = _fp16_bytes(std / 73.6 * jitter)
    elif qtype == T.Q4_K:
        # d * sc * q - dmin * m with 6-bit sc, m packed in 12 bytes. Keep sc in 32..63 and m in
        # 0..31 (top bits of the packed bytes set/cleared) so dmin * m ~ d * sc * 7.5 centres it.
        sc = rng.integers(32, 64, size=(nb, 8))
        mn = rng.integers(0, 32, size=(nb, 8))
        scales = np.zeros((nb, 12), dtype=np.uint8)
        scales[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
        scales[:, 4:8] = (mn[:, 0:4] & 63) | ((mn[:, 4:8] >> 4) << 6)
        scales[:, 8:12] = (sc[:, 4:8] & 15) | ((mn[:, 4:8] & 15) << 4)
        d = std / (4.6 * 47.5) * jitter
        out[:, 0:2] = _fp16_bytes(d)
        out[:, 2:4] = _fp16_bytes(d * 47.5 * 7.5 / 15.5)
        out[:, 4:16] = scales
    elif qtype == T.Q6_K:  # d * sc * (q - 32), q uniform 0..63 (std 18.5), int8 sc in 8..31
        out[:, 192:208] = rng.integers(8, 32, size=(nb, 16)).astype(np.int8).view(np.uint8)
        out[:, 208:210] = _fp16_bytes(std / (18.5 * 19.5) * jitter)
    else:
        raise ValueError(f"unsupported type {qtype.name}")
    return out.reshape(rows, (cols // per_block) * nbytes)


def fallback(qtype: T, cols: int) -> T:
    """llama.cpp's quantize fallback for rows that are not a multiple of the k-quant block."""
    if qtype in (T.Q4_K, T.Q6_K) and cols % 256:
        return {T.Q4_K: T.Q5_0, T.Q6_K: T.Q8_0}[qtype]
    return qtype


def use_more_bits(layer: int, n_layer: int) -> bool:  # llama-quant.cpp
    return layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2


def bytes_to_unicode() -> dict[int, str]:  # GPT-2's byte <-> printable character map
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def synthetic_vocab(size: int, special: tuple, seed: int) -> tuple[list[str], list[int], list[str]]:
    """Control tokens, the 256 byte tokens, then one new token per merge of two existing ones."""
    rng = np.random.default_rng(seed)
    byte_chars = list(bytes_to_unicode().values())
    tokens = list(special) + byte_chars
    types = [3] * len(special) + [1] * 256
    merges: list[str] = []
    seen = set(tokens)
    base = len(special)
    while len(tokens) < size:
        # Mostly extend an existing merged token by one byte (realistic lengths), sometimes pair bytes.
        left = tokens[base + int(rng.integers(0, len(tokens) - base))]
        right = byte_chars[int(rng.integers(0, 256))]
        if len(left) > 12:
            continue
        new = left + right
        if new in seen:
            continue
        seen.add(new)
        tokens.append(new)
        types.append(1)
        merges.append(f"{left} {right}")
    return tokens, types, merges


def write(shape_name: str, path: str, seed: int = 0) -> None:
    s = SHAPES[shape_name]
    rng = np.random.default_rng(seed)
    start = time.monotonic()
    w = GGUFWriter(path, s.arch)
    a = s.arch
    w.add_type("model")
    w.add_name(f"random-{shape_name}")
    w.add_uint32(f"{a}.block_count", s.n_layer)
    w.add_uint32(f"{a}.context_length", s.context)
    w.add_uint32(f"{a}.embedding_length", s.hidden)
    w.add_uint32(f"{a}.feed_forward_length", s.ffn)
    w.add_uint32(f"{a}.attention.head_count", s.n_head)
    w.add_uint32(f"{a}.attention.head_count_kv", s.n_kv_head)
    w.add_float32(f"{a}.rope.freq_base", s.rope_base)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", s.rms_eps)
    if a == "llama":
        w.add_uint32(f"{a}.vocab_size", s.vocab)
        w.add_uint32(f"{a}.rope.dimension_count", s.head_dim)
    if s.n_head * s.head_dim != s.hidden:
        w.add_uint32(f"{a}.attention.key_length", s.head_dim)
        w.add_uint32(f"{a}.attention.value_length", s.head_dim)
    w.add_uint32("general.file_type", 3 if s.layer_type == T.Q4_1 else 15)
    w.add_uint32("general.quantization_version", 2)
    tokens, types, merges = synthetic_vocab(s.vocab, s.special, seed)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "gpt-2")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", types)
    w.add_array("tokenizer.ggml.merges", merges)
    w.add_uint32("tokenizer.ggml.bos_token_id", s.bos)
    w.add_uint32("tokenizer.ggml.eos_token_id", s.eos)
    w.add_uint32("tokenizer.ggml.padding_token_id", s.eos)
    w.add_bool("tokenizer.ggml.add_bos_token", False)

    def matrix(name: str, qtype: T, rows: int, cols: int) -> None:
        qtype = fallback(qtype, cols)
        w.add_tensor(name, random_blocks(rng, qtype, rows, cols, cols ** -0.5), raw_dtype=qtype)

    def vector(name: str, n: int, value: float = 1.0, noise: float = 0.02) -> None:
        w.add_tensor(name, (value + noise * rng.standard_normal(n)).astype(np.float32))

    q_dim, kv_dim = s.n_head * s.head_dim, s.n_kv_head * s.head_dim
    matrix("token_embd.weight", s.embd_type, s.vocab, s.hidden)
    for i in range(s.n_layer):
        more = s.q4_k_m and use_more_bits(i, s.n_layer)
        p = f"blk.{i}."
        vector(p + "attn_norm.weight", s.hidden)
        matrix(p + "attn_q.weight", s.layer_type, q_dim, s.hidden)
        matrix(p + "attn_k.weight", s.layer_type, kv_dim, s.hidden)
        matrix(p + "attn_v.weight", T.Q6_K if more else s.layer_type, kv_dim, s.hidden)
        if s.qkv_bias:
            vector(p + "attn_q.bias", q_dim, 0.0, 0.1)
            vector(p + "attn_k.bias", kv_dim, 0.0, 0.1)
            vector(p + "attn_v.bias", kv_dim, 0.0, 0.1)
        matrix(p + "attn_output.weight", s.layer_type, s.hidden, q_dim)
        vector(p + "ffn_norm.weight", s.hidden)
        matrix(p + "ffn_gate.weight", s.layer_type, s.ffn, s.hidden)
        matrix(p + "ffn_up.weight", s.layer_type, s.ffn, s.hidden)
        matrix(p + "ffn_down.weight", T.Q6_K if more else s.layer_type, s.hidden, s.ffn)
    vector("output_norm.weight", s.hidden)
    if not s.tied:
        matrix("output.weight", T.Q6_K, s.vocab, s.hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path} ({shape_name}) in {time.monotonic() - start:.1f} s", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write(args.shape, args.path, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
