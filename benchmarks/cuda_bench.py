"""Offline GPU throughput of the engine, with a per-level time cap and a per-step time breakdown.

Same workload and the same two numbers as `cupyserve bench offline` (runtime/bench.py: N random
token-id prompts of `--prompt-len` start together, `--gen-len` greedy tokens each, EOS ignored,
prefix caching off; prefill tok/s = N * prompt_len / time until every sequence has its first
token, decode tok/s = generated tokens after the first / time after that), plus:

- a cap per level (`--cap-s`): a level that runs past it stops, is reported as capped with the
  decode rate of the steps it finished, and the higher levels are skipped (so one slow level
  cannot lose the whole run);
- `pp512`: one 512-token prompt prefilled in one step (median of 3), to set next to llama-bench's
  pp512;
- per decode step, medians of: the whole `engine.step()`, the scheduler, host-side input
  preparation, the host time spent issuing the model's forward (Python + kernel launches), the
  GPU time of that forward (CUDA events around it), the wait + copy of the logits to the host,
  the host-side sampler, and the count of backend op calls per forward.

The results are written to `--json` after every level.

    python benchmarks/cuda_bench.py --model M.gguf --num-seqs 1,16,64,256 --json out.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np


class StepTimer:
    """Wraps the engine's scheduler, runner, model forward, logits copy and sampler with timers."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.current: dict = {}
        self.op_calls = 0
        self.spin_ms = 0.0
        self.cupy = None
        if engine.device == "cuda":
            import cupy

            self.cupy = cupy
            self._spin_kernel = cupy.RawKernel(
                'extern "C" __global__ void spin(long long cycles) {'
                ' long long t0 = clock64(); while (clock64() - t0 < cycles) {} }', "spin")
            self._khz = cupy.cuda.runtime.getDeviceProperties(0)["clockRate"]
        e = engine

        def timed(obj, name, key, around=None):
            inner = getattr(obj, name)

            def wrapper(*args, **kwargs):
                t0 = time.perf_counter()
                if around:
                    around[0]()
                try:
                    return inner(*args, **kwargs)
                finally:
                    if around:
                        around[1]()
                    self.current[key] = self.current.get(key, 0.0) + time.perf_counter() - t0

            setattr(obj, name, wrapper)

        def ev_start():
            self.op_calls_at_start = self.op_calls
            if self.cupy is None:
                return
            if self.spin_ms:  # keep the GPU busy while the host issues the forward (see spin())
                self._spin(self.spin_ms)
            self.current["_ev0"] = cupy.cuda.Event()
            self.current["_ev0"].record()

        def ev_end():
            self.current["op_calls"] = self.op_calls - self.op_calls_at_start
            if self.cupy is None:
                return
            self.current["_ev1"] = cupy.cuda.Event()
            self.current["_ev1"].record()

        timed(e.scheduler, "schedule", "schedule")
        timed(e.runner, "execute", "execute")
        timed(e.model, "forward", "forward_launch", (ev_start, ev_end))
        timed(e.ops, "to_host", "to_host")
        timed(e.sampler, "sample", "sample")
        for name in dir(type(e.ops)):  # count backend op calls (kernel-launching entry points)
            if name.startswith("_") or name in ("to_host", "upload"):
                continue
            attr = getattr(e.ops, name)
            if callable(attr):
                setattr(e.ops, name, self._counted(attr))

    def _spin(self, ms: float) -> None:
        """A one-thread kernel that runs `ms`: the forward's launches queue up behind it, so the
        events around the forward then time the kernels back to back, without launch gaps."""
        self._spin_kernel((1,), (1,), (np.int64(ms * self._khz),))

    def _counted(self, fn):
        def wrapper(*args, **kwargs):
            self.op_calls += 1
            return fn(*args, **kwargs)
        return wrapper

    def step(self):
        self.current = {}
        t0 = time.perf_counter()
        outputs = self.engine.step()
        self.current["step"] = time.perf_counter() - t0
        if "_ev0" in self.current:
            self.current["gpu_forward"] = self.cupy.cuda.get_elapsed_time(
                self.current.pop("_ev0"), self.current.pop("_ev1")) / 1000
        return outputs, dict(self.current)


def summarize(samples: list[dict]) -> dict:
    if not samples:
        return {}
    out = {"steps": len(samples)}
    for key in ("step", "schedule", "execute", "forward_launch", "gpu_forward", "to_host", "sample"):
        values = [s.get(key, 0.0) for s in samples]
        out[key + "_ms"] = round(statistics.median(values) * 1000, 3)
    prep = [s.get("execute", 0) - s.get("forward_launch", 0) - s.get("to_host", 0) for s in samples]
    rest = [s["step"] - s.get("schedule", 0) - s.get("execute", 0) - s.get("sample", 0)
            for s in samples]
    out["input_prep_ms"] = round(statistics.median(prep) * 1000, 3)
    out["engine_rest_ms"] = round(statistics.median(rest) * 1000, 3)
    out["op_calls_per_forward"] = statistics.median([s.get("op_calls", 0) for s in samples])
    return out


def run_level(engine, timer: StepTimer, num_seqs: int, prompt_len: int, gen_len: int, seed: int,
              cap_s: float) -> dict:
    from cupyserve.runtime.sampling_params import SamplingParams

    rng = np.random.default_rng(seed)
    vocab = engine.config.vocab_size
    params = SamplingParams(max_tokens=gen_len, temperature=0.0, ignore_eos=True)
    ids = [f"bench-{num_seqs}-{i}-{time.monotonic_ns()}" for i in range(num_seqs)]
    for rid in ids:  # the same prompts as runtime/bench.py's run_offline
        engine.add_request(rid, rng.integers(100, min(vocab, 30000), size=prompt_len).tolist(), params)
    start = time.perf_counter()
    first_token_at = None
    generated = 0
    prefill_steps, decode_steps = [], []
    capped = False
    started: set[str] = set()  # sequences that have their first token (as runtime/bench.py)
    while engine.has_unfinished():
        in_decode = first_token_at is not None
        outputs, sample = timer.step()
        (decode_steps if in_decode else prefill_steps).append(sample)
        for out in outputs:
            generated += len(out.token_ids)
            if out.token_ids:
                started.add(out.request_id)
        if first_token_at is None and len(started) >= num_seqs:
            first_token_at = time.perf_counter()
        if time.perf_counter() - start > cap_s:
            capped = engine.has_unfinished()
            break
    end = time.perf_counter()
    engine.ops.synchronize()
    if capped:
        for rid in ids:
            engine.abort_request(rid)
    result = {"num_seqs": num_seqs, "prompt_len": prompt_len, "gen_len": gen_len,
              "capped_after_s": cap_s if capped else None,
              "prefill_tokens_per_s": None if first_token_at is None else
              round(num_seqs * prompt_len / (first_token_at - start), 1),
              "decode_tokens_per_s": None if first_token_at is None or end <= first_token_at else
              round((generated - num_seqs) / (end - first_token_at), 1),
              "generated_tokens": generated, "total_seconds": round(end - start, 3),
              "prefill_steps": summarize(prefill_steps), "decode_steps": summarize(decode_steps)}
    return result


def profile_level(engine, timer: StepTimer, num_seqs: int, prompt_len: int, spin_ms: float,
                  seed: int) -> dict:
    """A short run (32 generated tokens) whose pure decode steps 3..7 start behind a spin kernel:
    gpu_forward_ms is then the forward's GPU time without launch gaps (valid when
    forward_launch_ms < spin_ms, i.e. nothing in the forward waits for the GPU)."""
    from cupyserve.runtime.sampling_params import SamplingParams

    rng = np.random.default_rng(seed)
    params = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
    for i in range(num_seqs):
        engine.add_request(f"prof-{num_seqs}-{i}-{time.monotonic_ns()}",
                           rng.integers(100, 30000, size=prompt_len).tolist(), params)
    samples, started, step_index = [], set(), 0
    while engine.has_unfinished():
        decoding = len(started) >= num_seqs  # pure decode steps only
        timer.spin_ms = spin_ms if decoding and 2 <= step_index < 7 else 0.0
        outputs, sample = timer.step()
        if timer.spin_ms:
            samples.append(sample)
        step_index += decoding
        for out in outputs:
            if out.token_ids:
                started.add(out.request_id)
    timer.spin_ms = 0.0
    summary = summarize(samples)
    summary["spin_ms"] = spin_ms
    summary["launch_hidden"] = bool(samples) and summary["forward_launch_ms"] < 0.9 * spin_ms
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--num-seqs", default="1,16,64,256")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--cap-s", default="60,60,90,120", help="time cap per level, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pp512-runs", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from cupyserve.runtime.engine import LLMEngine
    from cupyserve.runtime.engine_args import EngineArgs

    levels = [int(n) for n in args.num_seqs.split(",")]
    caps = [float(c) for c in args.cap_s.split(",")]
    caps += [caps[-1]] * (len(levels) - len(caps))
    t0 = time.perf_counter()
    engine = LLMEngine(EngineArgs(model=args.model, device=args.device, max_num_seqs=max(levels),
                                  max_num_batched_tokens=max(args.max_num_batched_tokens, max(levels)),
                                  enable_prefix_caching=False))
    load_s = time.perf_counter() - t0
    timer = StepTimer(engine)
    t0 = time.perf_counter()
    run_level(engine, timer, 1, 16, 4, args.seed, 600)  # warm-up: NVRTC compiles, allocator
    run_level(engine, timer, 4, 64, 4, args.seed, 600)  # warm-up of the > 8-token (cuBLAS) path
    warmup_s = time.perf_counter() - t0
    report = {"model": args.model, "device": engine.device, "machine": platform.node(),
              "load_seconds": round(load_s, 2), "warmup_seconds": round(warmup_s, 2),
              "kv_blocks": engine.kv_cache.num_blocks, "results": [], "pp512": None}
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        report["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        report["cupy"] = cupy.__version__
    except Exception as exc:  # noqa: BLE001 - informational only
        report["gpu"] = f"unknown ({exc})"

    def save() -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)

    pp = [run_level(engine, timer, 1, 512, 1, args.seed + 1, 60) for _ in range(args.pp512_runs)]
    report["pp512"] = {"prefill_tokens_per_s_median":
                       statistics.median(r["prefill_tokens_per_s"] for r in pp),
                       "runs": [r["prefill_tokens_per_s"] for r in pp],
                       "step": pp[-1]["prefill_steps"]}
    if timer.cupy is not None:  # the 512-token forward's GPU time without launch gaps
        timer.spin_ms = 2 * pp[-1]["prefill_steps"]["forward_launch_ms"] + 5
        prof = run_level(engine, timer, 1, 512, 1, args.seed + 1, 60)["prefill_steps"]
        prof["spin_ms"], timer.spin_ms = timer.spin_ms, 0.0
        report["pp512"]["gpu_profile"] = prof
    save()
    for num_seqs, cap in zip(levels, caps):
        result = run_level(engine, timer, num_seqs, args.prompt_len, args.gen_len, args.seed, cap)
        report["results"].append(result)
        save()
        print(json.dumps({k: v for k, v in result.items() if not k.endswith("_steps")}), flush=True)
        if not result["capped_after_s"] and result["decode_steps"]:
            spin = 2 * result["decode_steps"]["forward_launch_ms"] + 5
            result["decode_gpu_profile"] = profile_level(engine, timer, num_seqs, args.prompt_len,
                                                         spin, args.seed + 2)
            save()
        if result["capped_after_s"]:
            print(f"level {num_seqs} capped after {cap} s; higher levels skipped", flush=True)
            break
    print(f"pp512 prefill tok/s: {report['pp512']['prefill_tokens_per_s_median']}")
    prof = report["pp512"].get("gpu_profile")
    if prof:
        print(f"pp512 forward: {prof['gpu_forward_ms']} ms GPU vs {prof['forward_launch_ms']} ms to issue "
              f"(spin {prof['spin_ms']:.1f} ms)")
    print(f"{'seqs':>5} {'prefill':>9} {'decode':>9} {'step ms':>8} {'launch':>7} {'gpu fw':>7} "
          f"{'to_host':>7} {'sample':>7} {'sched':>6} {'prep':>6} {'ops':>5}")
    for r in report["results"]:
        d = r["decode_steps"] or {}
        print(f"{r['num_seqs']:>5} {r['prefill_tokens_per_s']!s:>9} {r['decode_tokens_per_s']!s:>9} "
              f"{d.get('step_ms', '-')!s:>8} {d.get('forward_launch_ms', '-')!s:>7} "
              f"{d.get('gpu_forward_ms', '-')!s:>7} {d.get('to_host_ms', '-')!s:>7} "
              f"{d.get('sample_ms', '-')!s:>7} {d.get('schedule_ms', '-')!s:>6} "
              f"{d.get('input_prep_ms', '-')!s:>6} {d.get('op_calls_per_forward', '-')!s:>5}"
              + ("  CAPPED" if r["capped_after_s"] else ""))
    print("GPU time of one decode forward without launch gaps (spin-kernel profile):")
    for r in report["results"]:
        p = r.get("decode_gpu_profile")
        if p:
            print(f"{r['num_seqs']:>5} seqs: {p['gpu_forward_ms']} ms GPU vs {p['forward_launch_ms']} ms "
                  f"to issue (spin {p['spin_ms']:.1f} ms, hidden={p['launch_hidden']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
