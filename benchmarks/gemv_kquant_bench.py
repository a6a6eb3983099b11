"""Time the k-quant decode GEMV: the int8 path (quantize_q8_256 + gemv_kquant.cu, each rows-per-warp
choice and the default dispatch of linear()) vs the old float path (round_activations +
gemv_float.cu) on the Llama-3.1-8B projection shapes, at 1 and 8 tokens. Prints one JSON object.

    . benchmarks/gpu_env.sh && python3 benchmarks/gemv_kquant_bench.py   (GPU machine)

Each timing is CALLS calls captured in one CUDA graph (launch latency counts as in a replayed
decode step), cycling over enough copies of the weight that they do not fit the L2 cache, as
the weights of successive layers do not. GB/s counts the weight bytes read once per call.
"""
from __future__ import annotations

import json

import cupy
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from cupyserve.kernels.cuda import linear
from cupyserve.kernels.cuda.gemv_kquant import KQUANT_ROWS_PER_WARP_CHOICES, gemv_kquant, quantize_q8_256
from cupyserve.kernels.cuda.graphs import GraphPool
from cupyserve.kernels.cuda.module_cache import blocks_for, launch
from cupyserve.kernels.cuda.weights import load_weight

CALLS = 200
MIN_BYTES_CYCLED = 256 << 20  # > H100/H200 L2 (50 MB) several times over
SHAPES = [  # (name, out_features, in_features, type): Llama-3.1-8B Q4_K_M
    ("attn_q/o 4096x4096", 4096, 4096, T.Q4_K),
    ("ffn_gate/up 14336x4096", 14336, 4096, T.Q4_K),
    ("ffn_down 4096x14336", 4096, 14336, T.Q6_K),
    ("attn_k 1024x4096", 1024, 4096, T.Q4_K),
    ("attn_v 1024x4096", 1024, 4096, T.Q6_K),
]
FP16_FIELDS = {T.Q4_K: (0, 2), T.Q6_K: (208,)}


def random_kquant(ggml_type: T, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """[rows, row_bytes] uint8: random bytes with small positive fp16 scales."""
    block_values, block_bytes = GGML_QUANT_SIZES[ggml_type]
    num_blocks = rows * cols // block_values
    blocks = rng.integers(0, 256, size=(num_blocks, block_bytes), dtype=np.uint8)
    for offset in FP16_FIELDS[ggml_type]:
        scales = rng.uniform(0.002, 0.02, size=num_blocks).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(num_blocks, 2)
    return blocks.reshape(rows, -1)


def old_float_path(x: cupy.ndarray, weight) -> cupy.ndarray:  # [num_tokens, out_features]
    """The k-quant GEMV before gemv_kquant: float q8_256 activations, gemv_float.cu."""
    num_tokens, num_cols = x.shape
    out = cupy.empty((num_tokens, weight.out_features), dtype=np.float32)
    rounded = linear.round_activations(x, "q8_256")
    for seg in weight.segments:
        launch("gemv_float.cu", f"gemv_float<{int(seg.ggml_type)}, {num_tokens}, 1>",
               (blocks_for(seg.num_rows, linear.GEMV_WARPS_PER_CTA),), (32 * linear.GEMV_WARPS_PER_CTA,),
               (seg.raw, np.int64(seg.row_bytes), np.int32(seg.num_rows), np.int32(num_cols // 32),
                rounded, np.uint64(0), out[:, seg.row_begin:], np.int64(out.shape[1])))
    return out


def int8_path(x: cupy.ndarray, weight, rows_per_warp: int) -> cupy.ndarray:  # [num_tokens, out_features]
    out = cupy.empty((x.shape[0], weight.out_features), dtype=np.float32)
    codes = quantize_q8_256(x)
    for seg in weight.segments:
        gemv_kquant(seg, codes, None, out[:, seg.row_begin:], out.shape[1], rows_per_warp)
    return out


def time_us(pool: GraphPool, call, weights: list) -> float:
    graph = pool.capture(lambda: [call(weights[i % len(weights)]) for i in range(CALLS)])
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    graph.replay()  # first replay uploads the graph
    start.record(pool.stream)
    graph.replay()
    end.record(pool.stream)
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) * 1000.0 / CALLS


def main() -> None:
    rng = np.random.default_rng(0)
    pool = GraphPool()
    results = []
    for name, rows, cols, ggml_type in SHAPES:
        raw = random_kquant(ggml_type, rows, cols, rng)
        num_copies = max(1, -(-MIN_BYTES_CYCLED // raw.nbytes))
        weights = [load_weight([raw], [ggml_type], cols) for _ in range(num_copies)]
        for num_tokens in (1, 8):
            x = cupy.asarray(rng.standard_normal((num_tokens, cols), dtype=np.float32))
            old = cupy.asnumpy(old_float_path(x, weights[0]))
            new = cupy.asnumpy(linear.linear(x, weights[0]))
            paths = {"old_float": lambda w: old_float_path(x, w), "linear_default": lambda w: linear.linear(x, w)}
            for rows_per_warp in KQUANT_ROWS_PER_WARP_CHOICES:
                paths[f"int8_rows{rows_per_warp}"] = lambda w, r=rows_per_warp: int8_path(x, w, r)
            timings = {}
            for path, call in paths.items():
                us = time_us(pool, call, weights)
                timings[path] = {"us": round(us, 2), "GB/s": round(raw.nbytes / us / 1e3, 1)}
            results.append({
                "shape": name, "type": ggml_type.name, "num_tokens": num_tokens, "weight_bytes": raw.nbytes,
                "max_rel_diff_new_vs_old": float(np.abs(new - old).max() / np.abs(old).max()),
                "speedup_default_vs_old": round(timings["old_float"]["us"] / timings["linear_default"]["us"], 2),
                "timings": timings,
            })
            print(json.dumps(results[-1]), flush=True)
    device = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
    print(json.dumps({"device": device, "calls_per_graph": CALLS, "results": results}))


if __name__ == "__main__":
    main()
