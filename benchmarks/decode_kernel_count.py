"""Count the kernels of a model's batch-1 decode step: the nodes of the CUDA graph that the engine
replays (by type, through the driver's cuGraphGetNodes / cuGraphNodeGetType), and, for a
breakdown by name, the launches of our own .cu kernels during one eager decode forward (counted
through kernels/cuda/module_cache.get_function; CuPy elementwise ops and cuBLAS not included).

Expected for SmolLM2-135M Q4_1: 276 graph kernels (9.2 per layer over 30 layers; 306 before the
o GEMV took over the quantize_q8_32 launch, gemv_int8_fused; 246 measured on the H100 while the
down GEMV also took over gated_activation, a loss there: linear.FUSED_INPUT_MAX_FLOATS_PER_CTA).

    . benchmarks/gpu_env.sh && python3 benchmarks/decode_kernel_count.py MODEL.gguf   (GPU machine)
"""
from __future__ import annotations

import collections
import ctypes
import sys

import numpy as np

from cupyserve.kernels.batch import AttentionBatch
from cupyserve.kernels.cuda import module_cache
from cupyserve.runtime.engine import LLMEngine
from cupyserve.runtime.engine_args import EngineArgs

# CUgraphNodeType values of the CUDA driver API (cuda.h).
NODE_TYPES = {0: "kernel", 1: "memcpy", 2: "memset", 3: "host", 4: "graph", 5: "empty",
              6: "wait_event", 7: "event_record", 10: "mem_alloc", 11: "mem_free", 13: "conditional"}


def graph_node_types(graph_handle: int) -> collections.Counter:
    """Node types of a CUDA graph (a cudaGraph_t is a CUgraph), read with the driver API."""
    driver = ctypes.CDLL("libcuda.so.1")
    count = ctypes.c_size_t(0)
    check = _checker(driver)
    check(driver.cuGraphGetNodes(ctypes.c_void_p(graph_handle), None, ctypes.byref(count)), "cuGraphGetNodes")
    nodes = (ctypes.c_void_p * count.value)()
    check(driver.cuGraphGetNodes(ctypes.c_void_p(graph_handle), nodes, ctypes.byref(count)), "cuGraphGetNodes")
    types: collections.Counter = collections.Counter()
    for node in nodes:
        node_type = ctypes.c_int(-1)
        check(driver.cuGraphNodeGetType(ctypes.c_void_p(node), ctypes.byref(node_type)), "cuGraphNodeGetType")
        types[NODE_TYPES.get(node_type.value, f"type {node_type.value}")] += 1
    return types


def _checker(driver):
    def check(result: int, name: str) -> None:
        if result != 0:
            raise RuntimeError(f"{name} failed with CUresult {result}")
    return check


def launches_by_name(engine: LLMEngine) -> collections.Counter:
    """Our kernels launched by one eager batch-1 decode forward, by (file, kernel) name."""
    counts: collections.Counter = collections.Counter()
    real_get_function = module_cache.get_function

    def counting_get_function(file_name: str, name_expression: str):
        counts[f"{file_name}:{name_expression.split('<')[0]}"] += 1
        return real_get_function(file_name, name_expression)

    ops, xp = engine.ops, engine.ops.xp
    context = 200
    num_blocks = -(-context // engine.kv_cache.block_size)
    batch = AttentionBatch(
        query_start=xp.asarray([0, 1], np.int32), context_lens=xp.asarray([context], np.int32),
        block_tables=xp.arange(num_blocks, dtype=np.int32).reshape(1, num_blocks) % engine.kv_cache.num_blocks,
        slot_mapping=xp.asarray([context - 1], np.int64), positions=xp.asarray([context - 1], np.int32),
        num_seqs=1, max_query_len=1, max_context_len=context,
        generated_rows=np.ones(1, bool), logits_generated_rows=np.ones(1, bool))
    tokens, rows = xp.asarray([42], np.int32), xp.asarray([0], np.int64)
    engine.model.forward(tokens, batch, engine.kv_cache.layers, rows)  # warm-up: compiles
    module_cache.get_function = counting_get_function
    try:
        engine.model.forward(tokens, batch, engine.kv_cache.layers, rows)
    finally:
        module_cache.get_function = real_get_function
    ops.synchronize()
    return counts


def main(model: str) -> None:
    engine = LLMEngine(EngineArgs(model=model, device="cuda", max_num_seqs=1, max_model_len=1024,
                                  enable_prefix_caching=False))
    num_layers = engine.model.config.num_layers
    bucket = engine.decode_graphs.buckets[1]
    types = graph_node_types(bucket.graph._graph.graph)
    print(f"batch-1 decode graph: {sum(types.values())} nodes, {types['kernel']} kernels "
          f"({types['kernel'] / num_layers:.2f} per layer over {num_layers} layers); by type: {dict(types)}")
    counts = launches_by_name(engine)
    print(f"our .cu launches in one eager batch-1 forward: {sum(counts.values())}")
    for name, count in counts.most_common():
        print(f"  {count:5d}  {name}")


if __name__ == "__main__":
    main(sys.argv[1])
