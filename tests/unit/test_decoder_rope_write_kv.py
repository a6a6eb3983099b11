"""The decoder's fused rope + KV write (one `ops.rope_write_kv` per layer) gives exactly what the
unfused path (a family that overrides `qk_transform`: rope q, rope k, then `write_kv`) gives: the
same logits and the same cache, bit for bit, on a small llama GGUF with GQA and a partial rope,
including a padding row (slot -1) that must write nothing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from cupyserve.kernels.batch import AttentionBatch
from cupyserve.kernels.cpu_ops import CpuOps
from cupyserve.runtime.gguf_loader import GGUFFile
from cupyserve.runtime.kv_cache import KVCache
from cupyserve.runtime.models import load_model

HIDDEN, FFN, HEADS, KV_HEADS, VOCAB, LAYERS, BLOCK = 64, 96, 4, 2, 40, 2, 4


def _write_llama(path: Path) -> Path:
    rng = np.random.default_rng(0)
    head_dim = HIDDEN // HEADS
    w = GGUFWriter(str(path), "llama")
    for key, value in {"block_count": LAYERS, "context_length": 256, "embedding_length": HIDDEN,
                       "feed_forward_length": FFN, "attention.head_count": HEADS,
                       "attention.head_count_kv": KV_HEADS, "rope.dimension_count": head_dim // 2}.items():
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-6)
    q, kv = HEADS * head_dim, KV_HEADS * head_dim
    tensors = {"token_embd.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        tensors.update({f"blk.{i}.attn_norm.weight": (HIDDEN,), f"blk.{i}.ffn_norm.weight": (HIDDEN,),
                        f"blk.{i}.attn_q.weight": (q, HIDDEN), f"blk.{i}.attn_k.weight": (kv, HIDDEN),
                        f"blk.{i}.attn_v.weight": (kv, HIDDEN), f"blk.{i}.attn_output.weight": (HIDDEN, q),
                        f"blk.{i}.ffn_gate.weight": (FFN, HIDDEN), f"blk.{i}.ffn_up.weight": (FFN, HIDDEN),
                        f"blk.{i}.ffn_down.weight": (HIDDEN, FFN)})
    for name, shape in tensors.items():
        w.add_tensor(name, (0.3 * rng.standard_normal(shape)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _batch(tokens_per_row: list[int], cached: list[int], slots: list[int]) -> AttentionBatch:
    query_start = np.concatenate([[0], np.cumsum(tokens_per_row)]).astype(np.int32)
    context = [c + n for c, n in zip(cached, tokens_per_row)]
    positions = np.concatenate([np.arange(c, c + n) for c, n in zip(cached, tokens_per_row)]).astype(np.int32)
    tables = np.arange(len(tokens_per_row) * 4, dtype=np.int32).reshape(len(tokens_per_row), 4)
    return AttentionBatch(query_start=query_start, context_lens=np.asarray(context, np.int32),
                          block_tables=tables, slot_mapping=np.asarray(slots, np.int64), positions=positions,
                          num_seqs=len(tokens_per_row), max_query_len=max(tokens_per_row),
                          max_context_len=max(context), query_start_host=tuple(query_start.tolist()),
                          context_lens_host=tuple(context))


def _run(model, ops) -> tuple[list[np.ndarray], KVCache]:
    kv = KVCache.allocate(model.config, ops, 8, BLOCK)
    steps = [(np.array([3, 7, 11, 2, 5], np.int32), _batch([5], [0], [0, 1, 2, 3, 4])),
             # a decode row, then a padding row as the CUDA graph buckets add (slot -1)
             (np.array([9, 0], np.int32), _batch([1, 1], [5, 0], [5, -1]))]
    logits = []
    for tokens, batch in steps:
        rows = np.arange(len(tokens), dtype=np.int64)
        logits.append(model.forward(tokens, batch, kv.layers, rows))
    return logits, kv


def test_fused_rope_write_kv_equals_the_unfused_path(tmp_path):
    gguf = GGUFFile.open(_write_llama(tmp_path / "llama.gguf"))
    ops = CpuOps()
    fused_model = load_model(gguf, ops)
    calls = []
    fused_op = ops.rope_write_kv
    ops.rope_write_kv = lambda *args, **kwargs: calls.append(1) or fused_op(*args, **kwargs)

    class UnfusedModel(type(fused_model)):
        def qk_transform(self, layer, q, k, cos, sin):  # same math, but not the base method
            return super().qk_transform(layer, q, k, cos, sin)

    unfused_model = UnfusedModel(fused_model.config, fused_model.family, gguf, ops)
    fused_logits, fused_kv = _run(fused_model, ops)
    assert len(calls) == 2 * LAYERS  # the fused op ran for every layer of both steps
    unfused_logits, unfused_kv = _run(unfused_model, ops)
    assert len(calls) == 2 * LAYERS  # ... and the overriding family never reached it
    for fused, unfused in zip(fused_logits, unfused_logits):
        np.testing.assert_array_equal(fused, unfused)
    for (fk, fv), (uk, uv) in zip(fused_kv.layers, unfused_kv.layers):
        np.testing.assert_array_equal(fk, uk)
        np.testing.assert_array_equal(fv, uv)
        flat = fk.reshape(-1, KV_HEADS, HIDDEN // HEADS)
        assert flat[:6].any(axis=(1, 2)).all() and not flat[6:].any()  # slots 0-5 only
