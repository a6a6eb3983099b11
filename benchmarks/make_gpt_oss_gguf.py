"""Write a random-weight GGUF with the exact tensor layout and metadata of gpt-oss-20b (MXFP4).

The layout mirrors what llama.cpp's converter writes for gpt-oss-20b (ggml-org's
gpt-oss-20b-mxfp4.gguf, about 12.1 GB): architecture `gpt-oss`, experts' gate/up/down MXFP4
(GGUF type 39), every other matrix Q8_0 except the router (`ffn_gate_inp`, which the converter
keeps F32), norms, biases and attention sinks F32; YaRN rope metadata (type, factor 32, original
context 4096: the converter writes no beta keys, so the defaults 32 / 1 apply), sliding window
128 on alternating layers, harmony special tokens after a 199,998-token byte-level BPE vocab.
Throughput does not depend on the weights' values, so random blocks with sane scales (weights of
standard deviation ~1/sqrt(fan_in), activations stay finite) benchmark like the real model.

    python benchmarks/make_gpt_oss_gguf.py gpt-oss-20b /tmp/models/gpt-oss-20b.gguf
    python benchmarks/make_gpt_oss_gguf.py gpt-oss-20b /tmp/h.gguf --dry-run  # header only

Tensors are generated and written one at a time (peak RAM ~ two of the largest tensor, 0.6 GB
each), each in chunks on a thread pool (numpy's bit generators release the GIL); the bytes
depend only on --seed, not on the thread count. --dry-run writes the header and tensor
directory and extends the file sparsely to its full size (data all zeros, no disk used), so
loaders can check shapes and the total size without writing 12 GB.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUFWriter, LlamaFileType, RopeScalingType
from gguf import GGMLQuantizationType as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_random_gguf import random_blocks, synthetic_vocab  # noqa: E402

ARCH = "gpt-oss"
CHUNK_BYTES = 32 << 20  # one thread's share of a tensor: big enough to amortize the calls
TOKEN_TYPE_CONTROL = 3
# o200k_harmony's special tokens, by offset from the first one (id 199998 in gpt-oss-20b); the
# rest of the 1090 ids after the BPE vocab are `<|reserved_ID|>`.
HARMONY_SPECIALS = {0: "<|startoftext|>", 1: "<|endoftext|>", 4: "<|return|>", 5: "<|constrain|>",
                    7: "<|channel|>", 8: "<|start|>", 9: "<|end|>", 10: "<|message|>", 14: "<|call|>"}
NUM_SPECIAL_IDS = 1090
# E2M1 codes as ggml stores them (doubled; the scale is halved): RMS of a uniform random nibble.
MXFP4_CODE_RMS = float(np.sqrt(np.mean(np.square([0, 1, 2, 3, 4, 6, 8, 12] * 2, dtype=np.float64))))


@dataclass(frozen=True)
class GptOssShape:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int
    num_experts_used: int
    expert_ffn_size: int
    vocab_size: int
    context_length: int = 131072
    sliding_window: int = 128
    rope_theta: float = 150000.0
    yarn_factor: float = 32.0
    yarn_original_context: int = 4096
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("hidden_size", "expert_ffn_size", "head_dim"):
            if getattr(self, name) % 32:
                raise ValueError(f"{name} must be a multiple of the 32-value block, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if not 0 < self.num_experts_used <= self.num_experts:
            raise ValueError("num_experts_used must be in 1..num_experts")
        if self.vocab_size < NUM_SPECIAL_IDS + 256 + 16:
            raise ValueError(f"vocab_size must leave room for 256 byte tokens and merges after the "
                             f"{NUM_SPECIAL_IDS} special ids, got {self.vocab_size}")

    @property
    def first_special_id(self) -> int:
        return self.vocab_size - NUM_SPECIAL_IDS


SHAPES = {
    "gpt-oss-20b": GptOssShape(num_layers=24, hidden_size=2880, num_heads=64, num_kv_heads=8,
                               head_dim=64, num_experts=32, num_experts_used=4,
                               expert_ffn_size=2880, vocab_size=201088),
    # Same structure, small enough to load and run on a CPU in seconds.
    "gpt-oss-tiny": GptOssShape(num_layers=2, hidden_size=256, num_heads=8, num_kv_heads=2,
                                head_dim=64, num_experts=8, num_experts_used=4,
                                expert_ffn_size=256, vocab_size=32768),
}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: name, GGML type, numpy-order shape, and how its values are drawn
    (`std` of the weights; for F32 vectors `mean` + `std` noise)."""

    name: str
    ggml_type: T
    shape: tuple[int, ...]
    std: float
    mean: float = 0.0

    @property
    def num_bytes(self) -> int:
        block, type_size = GGML_QUANT_SIZES[self.ggml_type]
        return int(np.prod(self.shape[:-1], dtype=np.int64)) * (self.shape[-1] // block) * type_size


def tensor_plan(s: GptOssShape) -> list[TensorSpec]:
    """Every tensor of the file, in the order written."""
    q_dim, kv_dim, h = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.hidden_size
    e, f = s.num_experts, s.expert_ffn_size
    plan = [TensorSpec("token_embd.weight", T.Q8_0, (s.vocab_size, h), 1.0)]
    for i in range(s.num_layers):
        p = f"blk.{i}."
        plan += [
            TensorSpec(p + "attn_norm.weight", T.F32, (h,), 0.02, 1.0),
            TensorSpec(p + "attn_q.weight", T.Q8_0, (q_dim, h), h ** -0.5),
            TensorSpec(p + "attn_q.bias", T.F32, (q_dim,), 0.02),
            TensorSpec(p + "attn_k.weight", T.Q8_0, (kv_dim, h), h ** -0.5),
            TensorSpec(p + "attn_k.bias", T.F32, (kv_dim,), 0.02),
            TensorSpec(p + "attn_v.weight", T.Q8_0, (kv_dim, h), h ** -0.5),
            TensorSpec(p + "attn_v.bias", T.F32, (kv_dim,), 0.02),
            TensorSpec(p + "attn_output.weight", T.Q8_0, (h, q_dim), q_dim ** -0.5),
            TensorSpec(p + "attn_output.bias", T.F32, (h,), 0.02),
            TensorSpec(p + "attn_sinks.weight", T.F32, (s.num_heads,), 1.0),
            TensorSpec(p + "post_attention_norm.weight", T.F32, (h,), 0.02, 1.0),
            TensorSpec(p + "ffn_gate_inp.weight", T.F32, (e, h), h ** -0.5),
            TensorSpec(p + "ffn_gate_inp.bias", T.F32, (e,), 0.1),
            TensorSpec(p + "ffn_gate_exps.weight", T.MXFP4, (e, f, h), h ** -0.5),
            TensorSpec(p + "ffn_gate_exps.bias", T.F32, (e, f), 0.02),
            TensorSpec(p + "ffn_up_exps.weight", T.MXFP4, (e, f, h), h ** -0.5),
            TensorSpec(p + "ffn_up_exps.bias", T.F32, (e, f), 0.02),
            TensorSpec(p + "ffn_down_exps.weight", T.MXFP4, (e, h, f), f ** -0.5),
            TensorSpec(p + "ffn_down_exps.bias", T.F32, (e, h), 0.02),
        ]
    plan += [TensorSpec("output_norm.weight", T.F32, (h,), 0.02, 1.0),
             TensorSpec("output.weight", T.Q8_0, (s.vocab_size, h), h ** -0.5)]
    return plan


def mxfp4_scale_byte(std: float) -> int:
    """E8M0 byte e whose blocks (ggml value = code * 2**(e - 128)) have RMS about `std`."""
    return int(round(128 + np.log2(std / MXFP4_CODE_RMS)))


def fill_mxfp4(out: np.ndarray, rng: np.random.Generator, std: float) -> None:
    """out: [num_blocks, 17] uint8, filled with random MXFP4 blocks of RMS ~std (scale bytes
    spread over e-1..e+1 so blocks differ in scale as real ones do)."""
    num_bytes = out.size
    out.reshape(-1)[:] = rng.bit_generator.random_raw(-(-num_bytes // 8)).view(np.uint8)[:num_bytes]
    out[:, 0] = mxfp4_scale_byte(std) - 1 + out[:, 0] % 3


def fill_tensor(spec: TensorSpec, seed: int, index: int, pool: ThreadPoolExecutor) -> np.ndarray:
    """The tensor's bytes (quantized: [rows, row_bytes] uint8; F32: its shape), drawn from
    generators seeded by (seed, tensor index, chunk index) so the bytes are reproducible."""
    if spec.ggml_type == T.F32:
        rng = np.random.Generator(np.random.SFC64(np.random.SeedSequence(seed, spawn_key=(index,))))
        return (spec.mean + spec.std * rng.standard_normal(spec.shape)).astype(np.float32)
    cols = spec.shape[-1]
    rows = spec.num_bytes // (cols // 32 * GGML_QUANT_SIZES[spec.ggml_type][1])
    row_bytes = spec.num_bytes // rows
    out = np.empty((rows, row_bytes), dtype=np.uint8)
    rows_per_chunk = max(1, CHUNK_BYTES // row_bytes)

    def fill(start: int) -> None:
        stop = min(rows, start + rows_per_chunk)
        ss = np.random.SeedSequence(seed, spawn_key=(index, start // rows_per_chunk))
        rng = np.random.Generator(np.random.SFC64(ss))
        if spec.ggml_type == T.MXFP4:
            fill_mxfp4(out[start:stop].reshape(-1, 17), rng, spec.std)
        else:
            out[start:stop] = random_blocks(rng, spec.ggml_type, stop - start, cols, spec.std)

    list(pool.map(fill, range(0, rows, rows_per_chunk)))
    return out


def harmony_vocab(s: GptOssShape, seed: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): a byte-level BPE vocab up to `first_special_id`, then the
    harmony special and reserved tokens (control tokens), `vocab_size` in all."""
    tokens, types, merges = synthetic_vocab(s.first_special_id, (), seed)
    for offset in range(NUM_SPECIAL_IDS):
        tokens.append(HARMONY_SPECIALS.get(offset, f"<|reserved_{s.first_special_id + offset}|>"))
        types.append(TOKEN_TYPE_CONTROL)
    return tokens, types, merges


def add_metadata(w: GGUFWriter, shape_name: str, s: GptOssShape, seed: int) -> None:
    a = ARCH
    w.add_type("model")
    w.add_name(f"random-{shape_name}")
    w.add_uint32(f"{a}.block_count", s.num_layers)
    w.add_uint32(f"{a}.context_length", s.context_length)
    w.add_uint32(f"{a}.embedding_length", s.hidden_size)
    w.add_uint32(f"{a}.feed_forward_length", s.expert_ffn_size)
    w.add_uint32(f"{a}.attention.head_count", s.num_heads)
    w.add_uint32(f"{a}.attention.head_count_kv", s.num_kv_heads)
    w.add_float32(f"{a}.rope.freq_base", s.rope_theta)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", s.norm_eps)
    w.add_expert_count(s.num_experts)
    w.add_expert_used_count(s.num_experts_used)
    w.add_key_length(s.head_dim)
    w.add_value_length(s.head_dim)
    w.add_sliding_window(s.sliding_window)
    w.add_expert_feed_forward_length(s.expert_ffn_size)
    w.add_rope_scaling_type(RopeScalingType.YARN)
    w.add_rope_scaling_factor(s.yarn_factor)
    w.add_rope_scaling_orig_ctx_len(s.yarn_original_context)
    w.add_file_type(LlamaFileType.MOSTLY_MXFP4_MOE)
    w.add_quantization_version(2)
    tokens, types, merges = harmony_vocab(s, seed)
    special = {name: s.first_special_id + offset for offset, name in HARMONY_SPECIALS.items()}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-4o")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(special["<|startoftext|>"])
    w.add_eos_token_id(special["<|return|>"])
    w.add_pad_token_id(special["<|endoftext|>"])
    w.add_add_bos_token(False)


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def write(shape_name: str, path: str, seed: int = 0, is_dry_run: bool = False,
          num_threads: int | None = None) -> int:
    """Write the file; returns its size in bytes."""
    s = SHAPES[shape_name]
    plan = tensor_plan(s)
    start = time.monotonic()
    w = GGUFWriter(path, ARCH)
    add_metadata(w, shape_name, s, seed)
    for spec in plan:
        if spec.ggml_type == T.F32:
            w.add_tensor_info(spec.name, spec.shape, np.dtype(np.float32), spec.num_bytes)
        else:  # byte shape: the writer turns it back into the element shape
            byte_shape = (*spec.shape[:-1], spec.num_bytes // int(np.prod(spec.shape[:-1])))
            w.add_tensor_info(spec.name, byte_shape, np.dtype(np.uint8), spec.num_bytes, raw_dtype=spec.ggml_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    data_start = _align(fout.tell(), w.data_alignment)
    total = data_start + sum(_align(spec.num_bytes, w.data_alignment) for spec in plan)
    print(f"{shape_name}: {len(plan)} tensors, {total} bytes ({total / 1e9:.2f} GB), header "
          f"{data_start} bytes ({time.monotonic() - start:.1f} s)", file=sys.stderr, flush=True)
    if is_dry_run:
        fout.truncate(total)  # sparse: the data region reads as zeros and takes no disk
        w.close()
        return total
    num_threads = num_threads or os.cpu_count() or 1
    written = 0
    last_report = time.monotonic()
    # Generate tensor k+1 while tensor k is written, so the disk and the CPUs are busy together.
    with ThreadPoolExecutor(num_threads) as pool, ThreadPoolExecutor(1) as writer:
        pending = None
        for index, spec in enumerate(plan):
            data = fill_tensor(spec, seed, index, pool)
            if pending is not None:
                pending.result()
            pending = writer.submit(w.write_tensor_data, data)
            written += spec.num_bytes
            now = time.monotonic()
            if now - last_report > 2.0 or index == len(plan) - 1:
                last_report = now
                elapsed = now - start
                print(f"  {written / 1e9:6.2f} / {total / 1e9:.2f} GB, {elapsed:5.1f} s, "
                      f"{written / 1e9 / max(elapsed, 1e-9):.2f} GB/s ({spec.name})", file=sys.stderr, flush=True)
        pending.result()
    w.close()
    size = os.path.getsize(path)
    if size != total:
        raise RuntimeError(f"{path}: wrote {size} bytes, planned {total}")
    print(f"wrote {path} in {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="generator threads (default: all CPUs)")
    parser.add_argument("--dry-run", action="store_true",
                        help="write the header and tensor directory only; the file is extended "
                             "sparsely to its full size")
    args = parser.parse_args(argv)
    write(args.shape, args.path, args.seed, args.dry_run, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
