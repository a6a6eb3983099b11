"""A small synthetic gpt-oss GGUF (MXFP4_MOE, made by llama-quantize) for checking the family
against llama.cpp.

No gpt-oss weights small enough exist, so this writes a 3-layer model of gpt-oss's exact layout
(heads of 64 whose count x 64 != hidden, biases on Q/K/V/O, attention sinks, sliding window 16 on
layers 0 and 2, YaRN rope metadata of gpt-oss-20b, a router with bias over 6 experts of which 3
run, expert biases, untied output) with seeded random F32 weights, and quantizes it with
`llama-quantize IN OUT MXFP4_MOE` (experts MXFP4, token_embd Q8_0; attention and output kept F16,
router, norms, biases and sinks F32). The
quantized file is small (1.7 MB), so it is committed as
tests/goldens/data/synthetic-gpt-oss-mxfp4_moe.gguf and CI needs no llama.cpp.

Tokenizer: a byte-level BPE vocabulary that declares `tokenizer.ggml.pre = gpt-4o` (gpt-oss's
o200k regex): the first 1500 tokens of llama.cpp's gpt-2 vocab fixture (256 byte tokens + the
results of the first 1244 merges, with those merges), five merges that join across the places
where gpt-4o's regex splits and llama3's does not (or the reverse: CamelCase boundaries, a
contraction glued to its word), so a wrong pre-tokenizer changes ids, and gpt-oss's harmony
special tokens.

    python tests/oracle/make_synthetic_gpt_oss_gguf.py OUT.gguf   # needs llama-quantize
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

sys.path.insert(0, str(Path(__file__).parent))
from make_synthetic_family_gguf import VOCAB_DIR, content_hash, read_metadata  # noqa: E402

LLAMA_CPP_BIN = Path(os.environ.get("LLAMA_CPP_BIN", Path.home() / ".cache/cupyserve/llama.cpp/bin"))
FIXTURE = Path(__file__).resolve().parents[1] / "goldens" / "data" / "synthetic-gpt-oss-mxfp4_moe.gguf"
NUM_BPE_TOKENS = 1500
# gpt-oss's harmony special tokens (o200k_harmony), in their relative order.
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>",
                  "<|start|>", "<|end|>", "<|message|>", "<|call|>")
TOKEN_TYPE_NORMAL, TOKEN_TYPE_CONTROL = 1, 3
# gpt-4o splits "HelloWorld" / "camelCase" / "httpRequest" at the case change (no "o W", "el C",
# "p R" join) but keeps "it's" / "don't" in one piece (the "it 's", "on 't" joins happen);
# llama3's regex does the opposite.
# Attention and output matrices stay F16 (llama-quantize would make them Q8_0). Q8_0 rounds
# their inputs to 8 bits; a flipped rounding nudges the router, and top-k routing with softmax
# over the chosen experts only is discontinuous, so llama.cpp's own FA on vs off runs disagreed
# by 0.55 nats (p90 top-2 gap change) with Q8_0 there and 0.41 with F16.
QUANTIZE_OPTIONS = ("--output-tensor-type", "f16", "--tensor-type", "attn=f16")
BOUNDARY_MERGES = ("o W", "el C", "p R", "it 's", "on 't")


@dataclass(frozen=True)
class GptOssSpec:
    n_layer: int = 3
    hidden: int = 128
    ffn: int = 128  # one expert's width
    n_head: int = 4  # 4 x 64 = 256 != hidden
    n_kv_head: int = 2
    head_dim: int = 64
    n_expert: int = 6
    n_expert_used: int = 3
    sliding_window: int = 16
    rope_base: float = 150000.0
    yarn_factor: float = 32.0
    yarn_original_context: int = 4096
    rms_eps: float = 1e-5
    context: int = 131072
    logit_gain: float = 0.8  # output_norm weight: the scale of the logits
    seed: int = 7


SPEC = GptOssSpec()


def gpt4o_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of the synthetic gpt-4o vocabulary."""
    values, _ = read_metadata(VOCAB_DIR / "ggml-vocab-gpt-2.gguf")
    tokens = list(values["tokenizer.ggml.tokens"][:NUM_BPE_TOKENS])
    merges = list(values["tokenizer.ggml.merges"][: NUM_BPE_TOKENS - 256])
    # gpt-2's ids 256.. are its merges' results in merge order, so the cut is self-consistent.
    assert all(tokens[256 + k] == m.replace(" ", "") for k, m in enumerate(merges))
    merges += BOUNDARY_MERGES
    tokens += [m.replace(" ", "") for m in BOUNDARY_MERGES]
    types = [TOKEN_TYPE_NORMAL] * len(tokens) + [TOKEN_TYPE_CONTROL] * len(SPECIAL_TOKENS)
    return tokens + list(SPECIAL_TOKENS), types, merges


def lone_high_byte_ids(tokens: list[str]) -> list[int]:
    """Ids of the single-byte tokens of bytes >= 0x80 (gpt-2's byte-to-unicode alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    byte_of = {chr(b): b for b in printable}
    byte_of.update({chr(256 + n): b for n, b in enumerate(b for b in range(256) if b not in printable)})
    return [i for i, t in enumerate(tokens) if len(t) == 1 and t in byte_of and byte_of[t] >= 0x80]


def write_unquantized(path: str | Path, s: GptOssSpec = SPEC) -> None:
    """The F32 model llama-quantize starts from (seeded: the same bytes every time)."""
    rng = np.random.default_rng(s.seed)
    a = "gpt-oss"
    w = GGUFWriter(str(path), a)
    w.add_type("model")
    w.add_name("synthetic-gpt-oss")
    w.add_uint32(f"{a}.block_count", s.n_layer)
    w.add_uint32(f"{a}.context_length", s.context)
    w.add_uint32(f"{a}.embedding_length", s.hidden)
    w.add_uint32(f"{a}.feed_forward_length", s.ffn)
    w.add_uint32(f"{a}.expert_feed_forward_length", s.ffn)
    w.add_uint32(f"{a}.attention.head_count", s.n_head)
    w.add_uint32(f"{a}.attention.head_count_kv", s.n_kv_head)
    w.add_uint32(f"{a}.attention.key_length", s.head_dim)
    w.add_uint32(f"{a}.attention.value_length", s.head_dim)
    w.add_uint32(f"{a}.attention.sliding_window", s.sliding_window)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", s.rms_eps)
    w.add_uint32(f"{a}.expert_count", s.n_expert)
    w.add_uint32(f"{a}.expert_used_count", s.n_expert_used)
    w.add_float32(f"{a}.rope.freq_base", s.rope_base)
    w.add_uint32(f"{a}.rope.dimension_count", s.head_dim)
    w.add_string(f"{a}.rope.scaling.type", "yarn")
    w.add_float32(f"{a}.rope.scaling.factor", s.yarn_factor)
    w.add_uint32(f"{a}.rope.scaling.original_context_length", s.yarn_original_context)
    w.add_uint32("general.file_type", 0)
    tokens, types, merges = gpt4o_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-4o")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    special = {t: len(tokens) - len(SPECIAL_TOKENS) + i for i, t in enumerate(SPECIAL_TOKENS)}
    w.add_bos_token_id(special["<|startoftext|>"])
    w.add_eos_token_id(special["<|return|>"])
    w.add_pad_token_id(special["<|endoftext|>"])
    w.add_add_bos_token(False)
    vocab = len(tokens)

    def tensor(name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> None:
        w.add_tensor(name, (mean + std * rng.standard_normal(shape)).astype(np.float32))

    q_dim, kv_dim = s.n_head * s.head_dim, s.n_kv_head * s.head_dim
    tensor("token_embd.weight", (vocab, s.hidden), 1.0)
    for i in range(s.n_layer):
        p = f"blk.{i}."
        tensor(p + "attn_norm.weight", (s.hidden,), 0.1, 1.0)
        tensor(p + "attn_q.weight", (q_dim, s.hidden), s.hidden ** -0.5)
        tensor(p + "attn_k.weight", (kv_dim, s.hidden), s.hidden ** -0.5)
        tensor(p + "attn_v.weight", (kv_dim, s.hidden), s.hidden ** -0.5)
        tensor(p + "attn_q.bias", (q_dim,), 0.3)
        tensor(p + "attn_k.bias", (kv_dim,), 0.3)
        tensor(p + "attn_v.bias", (kv_dim,), 0.3)
        tensor(p + "attn_output.weight", (s.hidden, q_dim), q_dim ** -0.5)
        tensor(p + "attn_output.bias", (s.hidden,), 0.1)
        tensor(p + "attn_sinks.weight", (s.n_head,), 1.0)
        tensor(p + "post_attention_norm.weight", (s.hidden,), 0.1, 1.0)
        tensor(p + "ffn_gate_inp.weight", (s.n_expert, s.hidden), 2.0 * s.hidden ** -0.5)
        tensor(p + "ffn_gate_inp.bias", (s.n_expert,), 0.5)
        # gate/up at 2.5 sigma so the clamp at 7 matters for some features.
        tensor(p + "ffn_gate_exps.weight", (s.n_expert, s.ffn, s.hidden), 2.5 * s.hidden ** -0.5)
        tensor(p + "ffn_gate_exps.bias", (s.n_expert, s.ffn), 0.3)
        tensor(p + "ffn_up_exps.weight", (s.n_expert, s.ffn, s.hidden), 2.5 * s.hidden ** -0.5)
        tensor(p + "ffn_up_exps.bias", (s.n_expert, s.ffn), 0.3)
        tensor(p + "ffn_down_exps.weight", (s.n_expert, s.hidden, s.ffn), s.ffn ** -0.5)
        tensor(p + "ffn_down_exps.bias", (s.n_expert, s.hidden), 0.1)
    tensor("output_norm.weight", (s.hidden,), 0.02, s.logit_gain)
    output = rng.standard_normal((vocab, s.hidden)).astype(np.float32)
    # llama-server leaves out the probabilities of a token that ends inside a UTF-8 character and
    # the recorder cuts the walk there, so lone non-ASCII byte tokens get small logits.
    output[lone_high_byte_ids(tokens)] *= np.float32(0.1)
    w.add_tensor("output.weight", output)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_quantized(path: str | Path) -> str:
    """Write the F32 model, quantize it to MXFP4_MOE with llama-quantize; the content hash."""
    with tempfile.TemporaryDirectory() as tmp:
        unquantized = Path(tmp) / "synthetic-gpt-oss-f32.gguf"
        write_unquantized(unquantized)
        subprocess.run([str(LLAMA_CPP_BIN / "llama-quantize"), *QUANTIZE_OPTIONS, str(unquantized),
                        str(path), "MXFP4_MOE"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return content_hash(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", default=str(FIXTURE))
    args = parser.parse_args(argv)
    print(write_quantized(args.path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
