"""Host time of one engine decode step around the model: scheduling, sampling, bookkeeping.

The forward pass is replaced by a fixed logits row, so what remains is what the engine's Python
adds to every step (on the GPU the forward is a graph replay whose kernels run on the device).
Batch 1, greedy, on the CPU backend (the sampler's argmax over the vocabulary included):

    python benchmarks/host_step_overhead.py [--model smollm2-135m-instruct] [--steps 2000]
"""
from __future__ import annotations

import argparse
import collections
import time

import numpy as np

from cupyserve.runtime.engine import LLMEngine
from cupyserve.runtime.engine_args import EngineArgs
from cupyserve.runtime.model_runner import StepLogits
from cupyserve.runtime.sampling_params import SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="catalog name or .gguf path")
    parser.add_argument("--steps", type=int, default=2000, help="decode steps timed")
    args = parser.parse_args()
    engine = LLMEngine(EngineArgs(model=args.model, device="cpu", max_model_len=args.steps + 64,
                                  max_num_seqs=4, kv_cache_memory=256 << 20))
    logits = np.random.default_rng(0).standard_normal((1, engine.config.vocab_size)).astype(np.float32)
    engine.runner.execute = lambda entries, wants_all: StepLogits(logits=logits, rows=[slice(0, 1)])
    prompt = engine.tokenizer.encode("Hello there", add_special_tokens=True, parse_special=False)
    engine.add_request("r", prompt, SamplingParams(max_tokens=args.steps + 20, temperature=0.0,
                                                   ignore_eos=True))
    for _ in range(10):
        engine.step()
    seconds: collections.Counter = collections.Counter()

    def timed(owner, name: str) -> None:
        function = getattr(owner, name)

        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                seconds[name] += time.perf_counter() - start
        setattr(owner, name, wrapper)

    for owner, name in ((engine.scheduler, "schedule"), (engine.sampler, "sample"),
                        (engine.scheduler, "update"), (engine, "_update_gauges")):
        timed(owner, name)
    start = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    per_step = (time.perf_counter() - start) / args.steps * 1e6
    parts = ", ".join(f"{name} {value / args.steps * 1e6:.1f}" for name, value in seconds.items())
    print(f"host us per decode step: {per_step:.1f} ({parts})")


if __name__ == "__main__":
    main()
