"""The `cupyserve` command: serve, pull, ppl, bench.

Runtime modules are imported inside each subcommand so that `cupyserve --help` stays fast and
does not load NumPy, Jinja or a model.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

import orjson

from .byte_size import parse_byte_size

API_KEY_ENV = "CUPYSERVE_API_KEY"
FATAL_ERROR_POLL_SECONDS = 0.5


def _byte_size(text: str) -> int:
    try:
        return parse_byte_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the OpenAI-compatible HTTP server",
                              description="Load a model and serve /v1/completions, "
                                          "/v1/chat/completions, /v1/models, /health and /metrics.")
    p.add_argument("--model", default=None,
                   help="catalog name (see configs/models.yaml) or path to a .gguf file; "
                        "default: the catalog's default model")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="a Hugging Face tokenizer.json (or a folder holding one) to use instead of the "
                        "vocabulary in the GGUF file; tokenizer_config.json beside it supplies BOS/EOS, "
                        "add_bos and the chat template when present (default: the GGUF's tokenizer)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (default: 8000; 0 = any free)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="compute backend: cuda needs CuPy and a GPU; auto picks cuda when available")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on the API (not on /health, /metrics); "
                        f"default: ${API_KEY_ENV} if set")
    p.add_argument("--served-model-name", default=None,
                   help="model id reported by /v1/models and accepted in requests "
                        "(default: the model file's name)")
    p.add_argument("--max-num-seqs", type=int, default=64,
                   help="most sequences running at once (default: 64)")
    p.add_argument("--max-num-batched-tokens", type=int, default=512,
                   help="token budget of one engine step, prefill chunks + decodes (default: 512)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="context length in tokens (default: the model's)")
    p.add_argument("--kv-cache-memory", type=_byte_size, default=None, metavar="BYTES",
                   help="bytes for the KV cache pool, e.g. 512MiB, 2GB, 1073741824 "
                        "(default: a fraction of free memory)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.90,
                   help="fraction of GPU memory the server may use (default: 0.90)")
    p.add_argument("--gpu-memory-limit", type=_byte_size, default=None, metavar="BYTES",
                   help="cap on all GPU memory the server allocates (weights, KV cache, graphs, "
                        "scratch), e.g. 24GiB; startup fails if the model does not fit (default: none)")
    p.add_argument("--enforce-eager", action="store_true",
                   help="never replay decode steps from CUDA graphs: launch every kernel from Python "
                        "(slower; for debugging kernels)")
    p.add_argument("--block-size", type=int, default=16,
                   help="tokens per KV cache block, a power of two (default: 16)")
    p.add_argument("--no-prefix-caching", action="store_true",
                   help="do not reuse KV blocks of identical prompt prefixes")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for requests that give none, so a server run is reproducible (default: 0)")
    p.add_argument("--log-prompts", action="store_true",
                   help="include prompt text and token ids in the JSON logs (off: they may be private)")
    p.add_argument("--no-pull", action="store_true",
                   help="fail instead of downloading a catalog model that is not in the cache")
    p.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N",
                   help="split the model over N ranks, one process each (one GPU each on cuda); "
                        "see docs/tensor_parallel.md (default: 1)")
    p.add_argument("--tensor-parallel-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="a tensor-parallel step still unfinished after this long means a rank or "
                        "a collective hung: the server fails its requests and exits non-zero "
                        "(default: 300)")
    p.add_argument("--shutdown-grace-seconds", type=float, default=30.0,
                   help="on SIGTERM/SIGINT, how long running requests may take to finish before "
                        "they are aborted (default: 30)")
    p.set_defaults(handler=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cupyserve",
                                     description="OpenAI-compatible LLM inference server "
                                                 "(CuPy kernels on NVIDIA GPUs, NumPy on CPUs).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(subparsers)

    p = subparsers.add_parser("pull", help="download a catalog model into the cache",
                              description="Fetch a model listed in configs/models.yaml, verify its "
                                          "sha256, and store the GGUF in the model cache.")
    p.add_argument("name", help="catalog model name")
    p.set_defaults(handler=cmd_pull)

    p = subparsers.add_parser("ppl", help="perplexity of a model on a text file",
                              description="Score a UTF-8 text file in non-overlapping windows.")
    p.add_argument("--model", required=True, help="catalog name or path to a .gguf file")
    p.add_argument("--file", required=True, help="UTF-8 text file to score")
    p.add_argument("--ctx", type=int, required=True, help="window length in tokens")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="compute backend (default: auto)")
    p.set_defaults(handler=cmd_ppl)

    p = subparsers.add_parser("bench", help="benchmark the engine (arguments: cupyserve bench --help)",
                              add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed to the benchmark unchanged")
    p.set_defaults(handler=cmd_bench)
    return parser


def engine_args_from(ns: argparse.Namespace):
    from cupyserve.runtime.engine_args import EngineArgs

    fields = dict(
        served_model_name=ns.served_model_name, device=ns.device, max_num_seqs=ns.max_num_seqs,
        max_num_batched_tokens=ns.max_num_batched_tokens, block_size=ns.block_size,
        max_model_len=ns.max_model_len, kv_cache_memory=ns.kv_cache_memory,
        gpu_memory_utilization=ns.gpu_memory_utilization, enforce_eager=ns.enforce_eager,
        gpu_memory_limit=ns.gpu_memory_limit,
        enable_prefix_caching=not ns.no_prefix_caching, seed=ns.seed, pull_if_missing=not ns.no_pull,
        tensor_parallel_size=ns.tensor_parallel_size,
        tensor_parallel_timeout_s=ns.tensor_parallel_timeout,
        tokenizer=ns.tokenizer,
    )
    if ns.model is not None:
        fields["model"] = ns.model
    return EngineArgs(**fields)


def model_aliases(model_arg: str, served_name: str) -> list[str]:
    """Names a request's `model` may use besides the served one: what was passed to --model."""
    name = Path(model_arg).name
    return [a for a in dict.fromkeys([model_arg, name, name.removesuffix(".gguf")]) if a != served_name]


def cmd_serve(ns: argparse.Namespace) -> int:
    from cupyserve.runtime import log
    from cupyserve.runtime.engine import build_engine

    from .app import create_app
    from .serve import maybe_await, serve_app

    log.configure(log_prompts=ns.log_prompts)
    try:
        args = engine_args_from(ns)
    except ValueError as exc:
        print(f"cupyserve serve: error: {exc}", file=sys.stderr)
        return 2
    api_key = ns.api_key or os.environ.get(API_KEY_ENV) or None
    log.log_event("startup", model=args.model, device=args.device, host=ns.host, port=ns.port,
                  api_key_required=bool(api_key))
    try:
        engine = build_engine(args)
    except Exception as exc:  # noqa: BLE001 - a failed load is one clear line and exit 1
        log.log_event("startup_failed", error=str(exc), error_type=type(exc).__name__)
        print(f"cupyserve serve: error: {exc}", file=sys.stderr)
        return 1

    fatal_errors: list[str] = []

    async def exit_on_fatal_error() -> None:
        """An engine that can no longer run (a tensor-parallel rank died) fails its requests and
        reports `fatal_error` in health; then the server drains and exits non-zero, so that a
        supervisor restarts it."""
        while True:
            await asyncio.sleep(FATAL_ERROR_POLL_SECONDS)
            error = engine.health().get("fatal_error")
            if error:
                fatal_errors.append(error)
                log.log_event("fatal", error=error)
                os.kill(os.getpid(), signal.SIGTERM)  # the same drain as any shutdown
                return

    async def run() -> None:
        await maybe_await(engine.start())
        watcher = asyncio.ensure_future(exit_on_fatal_error())
        app = create_app(engine, api_key=api_key,
                         model_aliases=model_aliases(args.model, engine.model_name))
        try:
            await serve_app(app, app.state.server, ns.host, ns.port, ns.shutdown_grace_seconds)
        finally:
            watcher.cancel()
            log.log_event("shutdown", phase="engine")
            await maybe_await(engine.shutdown())
            log.log_event("shutdown", phase="done")

    asyncio.run(run())
    return 1 if fatal_errors else 0


def cmd_pull(ns: argparse.Namespace) -> int:
    from cupyserve.runtime.pull import pull

    try:
        path = pull(ns.name)
    except Exception as exc:  # noqa: BLE001 - the CLI reports any failure as one line
        print(f"cupyserve pull: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_ppl(ns: argparse.Namespace) -> int:
    from cupyserve.runtime.perplexity import run_perplexity

    result = run_perplexity(ns.model, ns.file, ns.ctx, ns.device)
    if dataclasses.is_dataclass(result):
        print(orjson.dumps(dataclasses.asdict(result)).decode())
    else:
        print(result)
    return 0


def cmd_bench(ns: argparse.Namespace) -> int:
    from cupyserve.runtime.bench import main as bench_main

    return int(bench_main(list(ns.bench_args)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return ns.handler(ns)
    except KeyboardInterrupt:
        return 130
