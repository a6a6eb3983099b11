"""Per-step profile of graph-replayed decode: medians of `engine.step()` and of its parts
(scheduler, model runner, sampler incl. its wait for the GPU, scheduler update) at 1 and 64
sequences, and the GPU time of one replay of that bucket's CUDA graph (events around 20 replays).

    . benchmarks/gpu_env.sh && python3 benchmarks/decode_profile.py MODEL.gguf   (GPU machine)
"""
from __future__ import annotations

import statistics
import sys
import time

import cupy
import numpy as np

from cupyserve.runtime.engine import LLMEngine
from cupyserve.runtime.engine_args import EngineArgs
from cupyserve.runtime.sampling_params import SamplingParams

PROMPT_LEN = 128
GEN_LEN = 128
REPLAYS = 20


def timed(times: dict[str, list[float]], obj, name: str) -> None:
    inner = getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            times.setdefault(name, []).append(time.perf_counter() - start)

    setattr(obj, name, wrapper)


def graph_gpu_ms(engine: LLMEngine, bucket_size: int) -> float:
    graphs = engine.decode_graphs
    stream = graphs.pool.stream
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record(stream)
    for _ in range(REPLAYS):
        graphs.buckets[bucket_size].graph.replay()
    end.record(stream)
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / REPLAYS


def main(model: str) -> None:
    engine = LLMEngine(EngineArgs(model=model, device="cuda", max_num_seqs=64, max_model_len=4096,
                                  enable_prefix_caching=False))
    times: dict[str, list[float]] = {}
    timed(times, engine.scheduler, "schedule")
    timed(times, engine.runner, "execute")
    timed(times, engine.sampler, "sample")
    timed(times, engine.scheduler, "update")
    for num_seqs in (1, 64):
        for repeat in range(2):
            times.clear()
            rng = np.random.default_rng(0)
            for index in range(num_seqs):
                engine.add_request(f"{num_seqs}-{repeat}-{index}", rng.integers(100, 30000, PROMPT_LEN).tolist(),
                                   SamplingParams(max_tokens=GEN_LEN, temperature=0.0, ignore_eos=True))
            steps = []
            while engine.has_unfinished():
                start = time.perf_counter()
                engine.step()
                steps.append(time.perf_counter() - start)
            median = {k: round(statistics.median(v[-100:]) * 1e3, 3) for k, v in times.items()}
            print(num_seqs, "step_ms", round(statistics.median(steps[5:]) * 1e3, 3),
                  *(f"{k} {v}" for k, v in median.items()),
                  "graph_gpu_ms", round(graph_gpu_ms(engine, num_seqs), 3), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
