"""Where a decode step's time goes: replays the engine's own CUDA graph for N sequences (default
1) under PyTorch's CUPTI profiler and prints, per kernel name, the launches per replay and their
device time, then the replay's span against the sum of its kernels (the rest is launch gaps).

    . benchmarks/gpu_env.sh && python3 benchmarks/decode_trace.py MODEL.gguf [--num-seqs N] [--json OUT.json]

(GPU machine; PyTorch is only the tracer here, it runs nothing.) Each sequence's KV cache holds a
128-token prompt plus 64 generated tokens when the graph is replayed, as in the middle of
`bench offline`'s run at N sequences.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import time

import numpy as np

from cupyserve.runtime.engine import LLMEngine
from cupyserve.runtime.engine_args import EngineArgs
from cupyserve.runtime.sampling_params import SamplingParams

REPLAYS = 30


def engine_at_context(model: str, num_seqs: int) -> tuple[LLMEngine, float]:
    """An engine whose `num_seqs` sequences have 192 tokens of context each, and its median
    decode step in ms (the steps after the prefills)."""
    engine = LLMEngine(EngineArgs(model=model, device="cuda", max_num_seqs=num_seqs, max_model_len=1024,
                                  enable_prefix_caching=False))
    rng = np.random.default_rng(0)
    for i in range(num_seqs):
        engine.add_request(f"trace-{i}", rng.integers(100, 30000, 128).tolist(),
                           SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True))
    steps = []
    while engine.has_unfinished():
        start = time.perf_counter()
        engine.step()
        steps.append(time.perf_counter() - start)
    return engine, statistics.median(steps[8:]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--num-seqs", type=int, default=1, help="sequences decoding together (default 1)")
    parser.add_argument("--json", help="write the per-kernel table here")
    args = parser.parse_args()

    engine, step_ms = engine_at_context(args.model, args.num_seqs)
    from torch.profiler import ProfilerActivity, profile  # late: the engine owns the CUDA context first
    graphs = engine.decode_graphs
    bucket = next(size for size in graphs.sizes if size >= args.num_seqs)
    graph = graphs.buckets[bucket].graph
    stream = engine.decode_graphs.pool.stream
    for _ in range(5):
        graph.replay()
    stream.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(REPLAYS):
            graph.replay()
            stream.synchronize()  # one replay at a time, so spans do not overlap
    kernels = sorted((e for e in prof.events() if e.device_type.name == "CUDA"),
                     key=lambda e: e.time_range.start)
    replays, current, last_end = [], [], None
    for event in kernels:  # a host sync separates replays: a gap > 20 us starts a new one
        if last_end is not None and event.time_range.start - last_end > 20:
            replays.append(current)
            current = []
        current.append(event)
        last_end = event.time_range.end
    replays.append(current)
    replays = [r for r in replays if len(r) > 10]
    spans = [r[-1].time_range.end - r[0].time_range.start for r in replays]
    busy = [sum(e.time_range.end - e.time_range.start for e in r) for r in replays]
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for r in replays:
        for e in r:
            by_name[e.name[:90]].append(e.time_range.end - e.time_range.start)
    num = len(replays)
    rows = sorted(((sum(v) / num, len(v) / num, statistics.median(v), name) for name, v in by_name.items()),
                  reverse=True)
    print(f"{args.num_seqs} seqs (graph bucket {bucket}): engine step median {step_ms:.3f} ms; replays traced {num}; kernels per replay "
          f"{len(replays[0]) if replays else 0}; span median {statistics.median(spans):.1f} us; kernel time "
          f"median {statistics.median(busy):.1f} us; gaps {statistics.median(spans) - statistics.median(busy):.1f} us")
    print(f"{'us/replay':>10} {'launches':>8} {'median us':>9}  kernel")
    for total, count, median, name in rows:
        print(f"{total:10.1f} {count:8.1f} {median:9.2f}  {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"num_seqs": args.num_seqs, "bucket": bucket, "step_ms": step_ms, "span_us": statistics.median(spans), "busy_us": statistics.median(busy),
                       "kernels": [dict(name=n, us_per_replay=t, launches=c, median_us=m) for t, c, m, n in rows]},
                      f, indent=1)
    engine.close()


if __name__ == "__main__":
    main()
