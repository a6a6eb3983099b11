"""GPU time of one gpt-oss-20b MoE layer (`ops.moe_ffn`: hidden 2880, ffn 2880, 32 MXFP4 experts,
top-4) per batch size, and which path (fused GEMV or grouped GEMM) ran. Random experts; CUDA
events around each call, median of `--repeats` after one warm-up call.

    python benchmarks/cuda_moe_layer.py --tokens 1,8,9,64,256,512 [--variants auto,no-int8,all-int8] [--json out.json]

Variants, for comparing the paths on one machine: `auto` (the launcher's choice), `no-int8`
(moe_int8.cu switched off: the float GEMV and the grouped GEMM take its sizes), `all-int8`
(moe_int8.cu at every size, past its tuned limits too), `mma-gbN` (auto, with the 16-row int8 mma
tiles loading N blocks ahead: moe.MMA_GROUP_BLOCKS[1] = N, one of 2, 3, 4).

The layer's share of a decode step is this time x 24 layers; llama.cpp's whole-model numbers on
this layout are in issue 6 (302 tok/s at batch 1, 2,258 tok/s at 64 sequences).
"""
from __future__ import annotations

import argparse
import json
import statistics

import numpy as np

HIDDEN = FFN = 2880
NUM_EXPERTS, NUM_EXPERTS_USED = 32, 4
MXFP4 = 39
MXFP4_BLOCK_BYTES = 17


def random_mxfp4(rows: int, cols: int, rng) -> np.ndarray:
    blocks = rng.integers(0, 256, size=(rows * cols // 32, MXFP4_BLOCK_BYTES), dtype=np.uint8)
    blocks[:, 0] = rng.integers(118, 127, size=blocks.shape[0], dtype=np.uint8)
    return blocks.reshape(rows, -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="1,8,9,64,256,512")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--variants", default="auto", help="comma-separated: auto, no-int8, all-int8")
    parser.add_argument("--json")
    args = parser.parse_args()

    import cupy

    from cupyserve.kernels import get_ops
    from cupyserve.kernels.cuda import moe

    ops = get_ops("cuda")
    rng = np.random.default_rng(0)
    experts = {}
    for name, rows, cols in (("gate", FFN, HIDDEN), ("up", FFN, HIDDEN), ("down", HIDDEN, FFN)):
        raw = random_mxfp4(NUM_EXPERTS * rows, cols, rng)
        experts[name] = ops.load_experts(raw, MXFP4, NUM_EXPERTS, rows, cols)
    biases = {name: cupy.asarray(rng.standard_normal((NUM_EXPERTS, w)).astype(np.float32) * 0.1)
              for name, w in (("gate", FFN), ("up", FFN), ("down", HIDDEN))}
    results = []
    int8_types, limits = moe.INT8_TYPES, (moe.INT8_MAX_AVERAGE_GROUP, moe.INT8_MAX_AVERAGE_GROUP_MMA)
    group_blocks = dict(moe.MMA_GROUP_BLOCKS)
    variants = args.variants.split(",")
    for num_tokens, variant in [(int(t), v) for t in args.tokens.split(",") for v in variants]:
        if variant not in ("auto", "no-int8", "all-int8", "mma-gb2", "mma-gb3", "mma-gb4"):
            raise SystemExit(f"unknown variant {variant!r}")
        moe.INT8_TYPES = frozenset() if variant == "no-int8" else int8_types
        moe.INT8_MAX_AVERAGE_GROUP, moe.INT8_MAX_AVERAGE_GROUP_MMA = (
            (1 << 30, 1 << 30) if variant == "all-int8" else limits)
        moe.MMA_GROUP_BLOCKS = dict(group_blocks)
        if variant.startswith("mma-gb"):
            moe.MMA_GROUP_BLOCKS[1] = int(variant[len("mma-gb"):])
        x = cupy.asarray(rng.standard_normal((num_tokens, HIDDEN)).astype(np.float32) * 0.1)
        logits = cupy.asarray(rng.standard_normal((num_tokens, NUM_EXPERTS)).astype(np.float32))
        call_args = (x, logits, experts["gate"], biases["gate"], experts["up"], biases["up"],
                     experts["down"], biases["down"], NUM_EXPERTS_USED)
        ops.moe_ffn(*call_args)
        times = []
        for _ in range(args.repeats):
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            ops.moe_ffn(*call_args)
            stop.record()
            stop.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, stop))
        median_ms = statistics.median(times)
        if moe.uses_int8_tiles(MXFP4, num_tokens * NUM_EXPERTS_USED, NUM_EXPERTS, num_tokens):
            path = "int8 per pair" if num_tokens <= moe.GEMV_MAX_TOKENS else "int8 sorted"
        else:
            path = "gemv" if num_tokens <= moe.GEMV_MAX_TOKENS else "grouped"
        row = {"tokens": num_tokens, "variant": variant, "path": path, "median_ms": round(median_ms, 4),
               "tokens_per_s_per_layer": round(num_tokens / median_ms * 1e3, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
                       "layer": [HIDDEN, FFN, NUM_EXPERTS, NUM_EXPERTS_USED], "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
