"""Time each op of a decode step alone at batch 1 on a model's own layer-3 weights: 200 calls
captured in one CUDA graph per op, so launch latency counts as it does in a replayed decode step.

    . benchmarks/gpu_env.sh && python3 benchmarks/decode_kernel_times.py MODEL.gguf   (GPU machine)
"""
from __future__ import annotations

import sys

import cupy
import numpy as np

from cupyserve.kernels.batch import AttentionBatch
from cupyserve.kernels.cuda import activation, attention, linear, norm, rope
from cupyserve.kernels.cuda.graphs import GraphPool
from cupyserve.kernels.cuda.module_cache import launch
from cupyserve.kernels.cuda.q8_activations import Q8Activations, empty_codes
from cupyserve.runtime.engine import LLMEngine
from cupyserve.runtime.engine_args import EngineArgs

CALLS = 200
CONTEXT = 200  # keys the decode attention reads


def ops_of(engine: LLMEngine) -> dict:
    model, cfg = engine.model, engine.model.config
    layer = model.layers[3]
    k_cache, v_cache = engine.kv_cache.layers[3]

    def normal(*shape):
        return cupy.random.standard_normal(shape, dtype=cupy.float32)

    x, ffn, gate_up = normal(1, cfg.hidden_size), normal(1, cfg.ffn_size), normal(1, 2 * cfg.ffn_size)
    attended = normal(1, cfg.num_heads * cfg.head_dim)
    q, k = normal(1, cfg.num_heads, cfg.head_dim), normal(1, cfg.num_kv_heads, cfg.head_dim)
    positions = cupy.asarray([CONTEXT], dtype=cupy.int32)
    cos, sin = rope.rope_cos_sin(positions, cfg.rope_dim, cfg.rope_theta)
    num_blocks = -(-CONTEXT // engine.kv_cache.block_size)
    batch = AttentionBatch(
        query_start=cupy.asarray([0, 1], cupy.int32), context_lens=cupy.asarray([CONTEXT], cupy.int32),
        block_tables=cupy.arange(num_blocks, dtype=cupy.int32).reshape(1, num_blocks) % engine.kv_cache.num_blocks,
        slot_mapping=cupy.asarray([CONTEXT - 1], cupy.int64), positions=positions, num_seqs=1,
        max_query_len=1, max_context_len=CONTEXT)

    def two_launch_swiglu():  # activation.swiglu's launch with codes, whatever the size rule says
        out, (codes, scales) = cupy.empty_like(ffn), empty_codes(1, cfg.ffn_size)
        launch("gated_activation.cu", "gated_activation<0, 1>", (-(-cfg.ffn_size // 256),), (256,),
               (gate_up, np.int32(1), np.int32(cfg.ffn_size), out, codes, scales))
        return Q8Activations(out, codes, scales)

    return {
        "add_rms_norm": lambda: norm.add_rms_norm(x, x, layer["ffn_norm"], 1e-5),
        "quantize_q8": lambda: linear.quantize_q8_32(x),
        "linear_qkv": lambda: linear.linear(x, layer["attn_qkv"]),
        "linear_o": lambda: linear.linear(attended, layer["attn_output"]),  # rounds its input itself if small
        "linear_o_two_launch": lambda: linear.linear(
            Q8Activations(attended, *linear.quantize_q8_32(attended)), layer["attn_output"]),
        "linear_gate_up": lambda: linear.linear(x, layer["ffn_gate_up"]),
        "linear_down": lambda: linear.linear(ffn, layer["ffn_down"]),
        "linear_lm_head": lambda: linear.linear(x, model.output),
        "apply_rope": lambda: rope.apply_rope(q, cos, sin, "normal"),
        "write_kv": lambda: attention.write_kv(k_cache, v_cache, k, k, batch.slot_mapping),
        "paged_attention": lambda: attention.paged_attention(q, k_cache, v_cache, batch, 0.125),
        "swiglu": lambda: activation.swiglu(gate_up),
        # The down GEMV applying SwiGLU itself (a GatedInput: one launch) vs SwiGLU with codes + GEMV.
        "swiglu_linear_down": lambda: linear.linear(activation.swiglu(gate_up, quantize_for=layer["ffn_down"]),
                                                    layer["ffn_down"]),
        "swiglu_linear_down_two_launch": lambda: linear.linear(two_launch_swiglu(), layer["ffn_down"]),
    }


def main(model: str) -> None:
    engine = LLMEngine(EngineArgs(model=model, device="cuda", max_num_seqs=1, max_model_len=1024,
                                  enable_prefix_caching=False, enforce_eager=True))
    pool = GraphPool()
    for name, op in ops_of(engine).items():
        graph = pool.capture(lambda op=op: [op() for _ in range(CALLS)])
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(pool.stream)
        graph.replay()
        end.record(pool.stream)
        end.synchronize()
        print(f"{name:16s} {cupy.cuda.get_elapsed_time(start, end) / CALLS * 1000:8.2f} us", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
