"""`cupyserve bench`: offline throughput of the engine (no HTTP), and serving latency against a
running server.

Offline mode feeds `num_seqs` random prompts of `prompt_len` tokens at once and generates
`gen_len` tokens each (greedy, EOS ignored) — the shape of llama.cpp's llama-batched-bench
(`-npp prompt_len -ntg gen_len -npl num_seqs`), so the numbers compare as ratios. Reported:
prefill tokens/s, aggregate decode tokens/s (generated tokens over the decode phase) and the
end-to-end time. Serving mode sends concurrent streaming requests to a server and reports TTFT and
inter-token latency percentiles.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time

import numpy as np

from .log import log_event


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cupyserve bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    offline = sub.add_parser("offline", help="engine throughput without HTTP")
    offline.add_argument("--model", default="smollm2-135m-instruct", help="catalog name or .gguf path")
    offline.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="backend")
    offline.add_argument("--num-seqs", default="1,8,32",
                         help="comma-separated concurrency levels (default: 1,8,32)")
    offline.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per sequence")
    offline.add_argument("--gen-len", type=int, default=128, help="generated tokens per sequence")
    offline.add_argument("--max-num-batched-tokens", type=int, default=2048,
                         help="engine step token budget (default: 2048)")
    offline.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    offline.add_argument("--max-model-len", type=int, default=None,
                         help="context length of the engine (default: the model's)")
    offline.add_argument("--enforce-eager", action="store_true",
                         help="no CUDA graphs: every decode step launches its kernels from Python")
    offline.add_argument("--tensor-parallel-size", type=int, default=1,
                         help="split the model over this many GPUs (or CPU processes)")
    offline.add_argument("--json", default=None, help="also write the results to this JSON file")
    serving = sub.add_parser("serving", help="TTFT / inter-token latency against a running server")
    serving.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    serving.add_argument("--model", default=None, help="model id (default: the server's first)")
    serving.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrency levels")
    serving.add_argument("--num-requests", type=int, default=32, help="requests per level")
    serving.add_argument("--prompt-len", type=int, default=128, help="prompt tokens (token-id prompts)")
    serving.add_argument("--gen-len", type=int, default=64, help="max_tokens per request")
    serving.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser


def run_offline(engine, num_seqs: int, prompt_len: int, gen_len: int, seed: int) -> dict:
    from .sampling_params import SamplingParams

    rng = np.random.default_rng(seed)
    vocab = engine.config.vocab_size
    params = SamplingParams(max_tokens=gen_len, temperature=0.0, ignore_eos=True)
    for index in range(num_seqs):
        prompt = rng.integers(100, min(vocab, 30000), size=prompt_len).tolist()
        engine.add_request(f"bench-{num_seqs}-{index}", prompt, params)
    start = time.perf_counter()
    first_token_at = None
    generated = 0
    started: set[str] = set()  # sequences that have their first token
    while engine.has_unfinished():
        outputs = engine.step()
        for out in outputs:
            generated += len(out.token_ids)
            if out.token_ids:
                started.add(out.request_id)
        # The prefill phase ends when *every* sequence has its first token: the scheduler packs
        # decodes first, so early sequences generate while later prompts are still prefilling.
        if first_token_at is None and len(started) >= num_seqs:
            first_token_at = time.perf_counter()
    end = time.perf_counter()
    engine.ops.synchronize()
    first_token_at = first_token_at or end
    decode_tokens = generated - num_seqs
    return {
        "num_seqs": num_seqs,
        "prompt_len": prompt_len,
        "gen_len": gen_len,
        "prefill_tokens_per_s": round(num_seqs * prompt_len / (first_token_at - start), 1),
        "decode_tokens_per_s": round(decode_tokens / max(end - first_token_at, 1e-9), 1),
        "total_seconds": round(end - start, 3),
    }


def offline_main(args: argparse.Namespace) -> int:
    from .engine import LLMEngine
    from .engine_args import EngineArgs

    levels = [int(n) for n in args.num_seqs.split(",")]
    engine = LLMEngine(EngineArgs(model=args.model, device=args.device, max_num_seqs=max(levels),
                                  max_num_batched_tokens=max(args.max_num_batched_tokens, max(levels)),
                                  enable_prefix_caching=False, enforce_eager=args.enforce_eager,
                                  max_model_len=args.max_model_len,
                                  tensor_parallel_size=args.tensor_parallel_size))
    run_offline(engine, 1, 16, 4, args.seed)  # warm-up: kernel compilation, allocator, caches
    results = []
    for num_seqs in levels:
        result = run_offline(engine, num_seqs, args.prompt_len, args.gen_len, args.seed)
        results.append(result)
        log_event("bench_progress", **result)
    report = {"model": engine.model_name, "device": engine.device, "machine": platform.node(),
              "cuda_graphs": engine.decode_graphs is not None,
              "processor": platform.processor(), "results": results}
    print(f"{'seqs':>5} {'prefill tok/s':>14} {'decode tok/s':>13} {'seconds':>8}")
    for r in results:
        print(f"{r['num_seqs']:>5} {r['prefill_tokens_per_s']:>14} {r['decode_tokens_per_s']:>13} "
              f"{r['total_seconds']:>8}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


async def _serving_level(client, url: str, model: str, concurrency: int, num_requests: int,
                         prompt_len: int, gen_len: int) -> dict:
    ttfts: list[float] = []
    itls: list[float] = []
    semaphore = asyncio.Semaphore(concurrency)
    rng = np.random.default_rng(concurrency)

    async def one() -> None:
        prompt = rng.integers(100, 30000, size=prompt_len).tolist()
        body = {"model": model, "prompt": prompt, "max_tokens": gen_len, "temperature": 0,
                "ignore_eos": True, "stream": True}
        async with semaphore:
            start = time.perf_counter()
            last = None
            async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
                if response.status_code != 200:  # a failed request must not pass as a fast one
                    detail = (await response.aread()).decode(errors="replace")[:500]
                    raise RuntimeError(f"request failed with HTTP {response.status_code}: {detail}")
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    now = time.perf_counter()
                    if last is None:
                        ttfts.append(now - start)
                    else:
                        itls.append(now - last)
                    last = now

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(num_requests)))
    elapsed = time.perf_counter() - start

    def pct(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)) * 1000, 2) if values else float("nan")

    return {"concurrency": concurrency, "num_requests": num_requests,
            "ttft_ms_p50": pct(ttfts, 50), "ttft_ms_p99": pct(ttfts, 99),
            "itl_ms_p50": pct(itls, 50), "itl_ms_p99": pct(itls, 99),
            "num_output_tokens": len(itls) + len(ttfts),
            "output_tokens_per_s": round((len(itls) + len(ttfts)) / elapsed, 1)}


def serving_main(args: argparse.Namespace) -> int:
    import httpx

    async def run() -> list[dict]:
        async with httpx.AsyncClient(timeout=600) as client:
            model = args.model or (await client.get(f"{args.url}/v1/models")).json()["data"][0]["id"]
            return [await _serving_level(client, args.url, model, int(c), args.num_requests,
                                         args.prompt_len, args.gen_len)
                    for c in args.concurrency.split(",")]

    results = asyncio.run(run())
    print(f"{'conc':>5} {'ttft p50':>9} {'ttft p99':>9} {'itl p50':>8} {'itl p99':>8} {'tok/s':>8}")
    for r in results:
        print(f"{r['concurrency']:>5} {r['ttft_ms_p50']:>9} {r['ttft_ms_p99']:>9} {r['itl_ms_p50']:>8} "
              f"{r['itl_ms_p99']:>8} {r['output_tokens_per_s']:>8}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"url": args.url, "results": results}, f, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return offline_main(args) if args.mode == "offline" else serving_main(args)


if __name__ == "__main__":
    sys.exit(main())
