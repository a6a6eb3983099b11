"""GPU time of one decode attention launch (`paged_attention` on a pure decode batch), the current
kernel against a baseline `.cu` (the two-kernel split + combine version this one replaced), for
the SmolLM2-135M (9 q / 3 kv heads, head_dim 64) and Llama-3-8B (32 q / 8 kv, head_dim 128) head
shapes at batch 1 / 16 / 64 and contexts 256 / 2048. Each variant is captured as a CUDA graph of
30 launches (like the 30 layers of a replayed SmolLM2 decode step), replayed after a warm-up and
timed with CUDA events; the figure is the median replay / 30. Prints JSON. `--warp-tiles` and
`--target-ctas` time the new kernel under other values of attention.MIN_WARP_TILES_PER_SPLIT and
attention.DECODE_TARGET_CTAS (the first value of each is the one the baseline is compared with).

    git show 7511989:kernels/cuda/paged_attention_decode.cu > old_decode.cu   (the baseline)
    . benchmarks/gpu_env.sh && python3 benchmarks/attention_decode_bench.py --baseline-cu old_decode.cu

`--previous-cu FILE` times, instead of that two-kernel baseline, another version of today's
kernel (same launcher and signature, e.g. `git show HEAD~1:kernels/cuda/paged_attention_decode.cu`).
`--cold` evicts L2 before each launch (a 96 MiB fill, timed alone and subtracted), as in a real
decode step where a layer's weights pass through L2 between two reads of its KV cache.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

SHAPES = {"smollm2-135m": (9, 3, 64), "llama-8b": (32, 8, 128)}  # num_heads, num_kv_heads, head_dim
BATCHES = (1, 16, 64)
CONTEXTS = (256, 2048)
LAUNCHES_PER_GRAPH = 30
BLOCK_SIZE = 16
SCALE = 0.125


def compile_baseline(path: Path):
    """(split kernel, combine kernel) of the old decode attention source, with its local includes
    taken from this checkout (the shared helpers it used are unchanged)."""
    import cupy

    from cupyserve.kernels.cuda.module_cache import COMPILE_OPTIONS, load_source

    code = path.read_text().replace('#include "attention_common.cuh"', load_source("attention_common.cuh"))
    names = ("attention_decode_split", "attention_decode_combine")  # C++ names: need name expressions
    module = cupy.RawModule(code=code, options=COMPILE_OPTIONS, name_expressions=names)
    return tuple(module.get_function(name) for name in names)


def baseline_attention(kernels, q, k_cache, v_cache, context_lens, block_tables):
    """The replaced launcher: up to 32 splits per (row, head), then a combine launch."""
    import cupy

    split, combine = kernels
    num_rows, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    rows = 1 << max(0, num_rows - 1).bit_length()
    num_splits = max(1, min(32, -(-512 // (rows * num_heads))))
    part_acc = cupy.empty((num_rows, num_heads, num_splits, head_dim), dtype=np.float32)
    part_max = cupy.empty((num_rows, num_heads, num_splits), dtype=np.float32)
    part_sum = cupy.empty((num_rows, num_heads, num_splits), dtype=np.float32)
    out = cupy.empty_like(q)
    split((num_rows, num_heads, num_splits), (128,),
          (q, k_cache, v_cache, context_lens, block_tables, np.int32(block_tables.shape[1]), np.int32(num_heads),
           np.int32(num_kv_heads), np.int32(head_dim), np.int32(block_size), np.float32(SCALE), np.int32(0),
           np.float32(0.0), part_acc, part_max, part_sum))
    combine((num_rows * num_heads,), (64,),
            (part_acc, part_max, part_sum, np.uintp(0), np.int32(num_heads), np.int32(num_splits),
             np.int32(head_dim), out))
    return out


def time_graph(function, repeats: int, flush=None) -> tuple[float, object]:
    """Median microseconds per launch of `function` over graph replays, and one result. With
    `flush` (an L2-evicting fill), each launch follows one, and a graph of the fills alone is
    timed too and subtracted."""
    import cupy

    from cupyserve.kernels.cuda.graphs import GraphPool

    def replay_us(body) -> tuple[float, object]:
        pool = GraphPool()
        graph = pool.capture(lambda: [body() for _ in range(LAUNCHES_PER_GRAPH)][-1])
        graph.replay()
        times = []
        for _ in range(repeats):
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(pool.stream)
            graph.replay()
            end.record(pool.stream)
            end.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, end) * 1000 / LAUNCHES_PER_GRAPH)
        return statistics.median(times), graph.result

    if flush is None:
        us, result = replay_us(function)
        return us, cupy.asnumpy(result)
    flush_us, _ = replay_us(flush)
    us, result = replay_us(lambda: (flush(), function())[1])
    return us - flush_us, cupy.asnumpy(result)


def l2_flush():
    """A launch that evicts L2 (50 MB on the H100): a fill of a 96 MiB buffer of its own."""
    import cupy

    scratch = cupy.empty(96 << 20, dtype=cupy.uint8)
    return lambda: scratch.fill(1)


def decode_source_dir(path: Path, checkout_dir: Path) -> Path:
    """A copy of this checkout's kernel sources with paged_attention_decode.cu taken from `path`."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp())
    for item in checkout_dir.iterdir():
        if item.suffix in (".cu", ".cuh"):
            shutil.copy(item, directory / item.name)
    shutil.copy(path, directory / "paged_attention_decode.cu")
    return directory


def compile_from(directory: Path) -> None:
    """Kernels are compiled from `directory` from now on (the compiled-function cache is dropped,
    since it is keyed by file name, not by folder)."""
    from cupyserve.kernels.cuda import module_cache

    module_cache.CUDA_DIR = directory
    module_cache._functions.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-cu", type=Path, help="old paged_attention_decode.cu (omit: new kernel only)")
    parser.add_argument("--previous-cu", type=Path, help="another paged_attention_decode.cu, same signature")
    parser.add_argument("--cold", action="store_true", help="evict L2 before every launch")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warp-tiles", default="1", help="MIN_WARP_TILES_PER_SPLIT values, e.g. 1,2,4")
    parser.add_argument("--target-ctas", default="256", help="DECODE_TARGET_CTAS values, e.g. 132,256,512")
    args = parser.parse_args()

    import cupy

    from cupyserve.kernels.batch import AttentionBatch
    from cupyserve.kernels.cuda import attention, module_cache

    baseline = compile_baseline(args.baseline_cu) if args.baseline_cu else None
    checkout_dir = module_cache.CUDA_DIR
    previous_dir = decode_source_dir(args.previous_cu, checkout_dir) if args.previous_cu else None
    flush = l2_flush() if args.cold else None
    defaults = attention.DECODE_TARGET_CTAS, attention.MIN_WARP_TILES_PER_SPLIT
    rng = np.random.default_rng(0)
    records = []
    for name, (num_heads, num_kv_heads, head_dim) in SHAPES.items():
        for num_rows in BATCHES:
            for context in CONTEXTS:
                blocks_per_row = -(-context // BLOCK_SIZE)
                num_blocks = num_rows * blocks_per_row
                cache_shape = (num_blocks, BLOCK_SIZE, num_kv_heads, head_dim)
                k_cache = cupy.random.standard_normal(cache_shape, dtype=cupy.float32).astype(cupy.float16)
                v_cache = cupy.random.standard_normal(cache_shape, dtype=cupy.float32).astype(cupy.float16)
                q = cupy.random.standard_normal((num_rows, num_heads, head_dim), dtype=cupy.float32)
                tables = cupy.asarray(rng.permutation(num_blocks).reshape(num_rows, blocks_per_row).astype(np.int32))
                context_lens = cupy.full((num_rows,), context, dtype=cupy.int32)
                batch = AttentionBatch(
                    query_start=cupy.arange(num_rows + 1, dtype=cupy.int32), context_lens=context_lens,
                    block_tables=tables, slot_mapping=cupy.zeros(num_rows, cupy.int64),
                    positions=context_lens - 1, num_seqs=num_rows, max_query_len=1, max_context_len=context)
                record = {"shape": name, "batch": num_rows, "context": context}
                for target_ctas in [int(v) for v in args.target_ctas.split(",")]:
                    for warp_tiles in [int(v) for v in args.warp_tiles.split(",")]:
                        attention.DECODE_TARGET_CTAS, attention.MIN_WARP_TILES_PER_SPLIT = target_ctas, warp_tiles
                        us, out = time_graph(
                            lambda: attention.paged_attention(q, k_cache, v_cache, batch, SCALE), args.repeats, flush)
                        record[f"new_us[target={target_ctas},tiles={warp_tiles}]"] = round(us, 2)
                        if "new_us" not in record:
                            record["new_us"], new_out = round(us, 2), out
                attention.DECODE_TARGET_CTAS, attention.MIN_WARP_TILES_PER_SPLIT = defaults
                if baseline:
                    old_us, old_out = time_graph(
                        lambda: baseline_attention(baseline, q, k_cache, v_cache, context_lens, tables), args.repeats)
                    record.update(old_us=round(old_us, 2), speedup=round(old_us / record["new_us"], 2),
                                  max_abs_diff=float(np.max(np.abs(new_out - old_out))))
                if previous_dir:
                    compile_from(previous_dir)
                    prev_us, prev_out = time_graph(
                        lambda: attention.paged_attention(q, k_cache, v_cache, batch, SCALE), args.repeats, flush)
                    compile_from(checkout_dir)
                    record.update(previous_us=round(prev_us, 2), speedup_vs_previous=round(prev_us / record["new_us"], 2),
                                  max_abs_diff_vs_previous=float(np.max(np.abs(new_out - prev_out))))
                records.append(record)
                print(json.dumps(record), flush=True)
    print(json.dumps({"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
                      "launches_per_graph": LAUNCHES_PER_GRAPH, "results": records}))


if __name__ == "__main__":
    main()
