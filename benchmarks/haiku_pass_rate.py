"""Haiku acceptance pass rate: every catalog model (or the ones named) served by a real
`cupyserve serve` process on the CPU, asked for a haiku containing the minute in words for 20
different minutes (0, 3, 6, ..., 57 by default), with the same checks as
tests/e2e/test_e2e_haiku.py: every reply has tokens, and the /metrics generation counter moves by
the sum of the replies' usage.completion_tokens. The requests of one model run concurrently (one
batch: a 2-core CPU that other jobs share needs minutes for 20 haiku one after another), each
seeded with its minute. On a shared machine set OPENBLAS_NUM_THREADS=1 (docs/benchmarks.md: two
busy-waiting BLAS threads make each step many times slower there). Writes a JSON report (per
model: pass count, every haiku) and prints a summary; docs/haiku.md records it.

    OPENBLAS_NUM_THREADS=1 python benchmarks/haiku_pass_rate.py --json benchmarks/results/haiku_pass_rate.json
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT / "tests" / "e2e")]

from haiku import generation_counter, request_haiku  # noqa: E402
from server_process import start_server, stop_server  # noqa: E402

from cupyserve.runtime.catalog import load_catalog, resolve_model  # noqa: E402


def run_model(name: str, minutes: list[int], max_tokens: int, temperature: float) -> dict:
    path = resolve_model(name, pull_if_missing=True)
    with tempfile.TemporaryDirectory() as workdir:
        running = start_server(path, Path(workdir))
        try:
            with httpx.Client(base_url=running.url, timeout=3600.0,
                              limits=httpx.Limits(max_connections=len(minutes))) as client:
                before = generation_counter(client)
                start = time.monotonic()
                with concurrent.futures.ThreadPoolExecutor(len(minutes)) as pool:
                    results = list(pool.map(
                        lambda m: request_haiku(client, running.model, m, max_tokens, temperature),
                        minutes))
                seconds = time.monotonic() - start
                moved = generation_counter(client) - before
            total = sum(r.completion_tokens for r in results)
            if moved != total or min(r.completion_tokens for r in results) < 1:
                raise AssertionError(f"{name}: usage says {total} tokens, /metrics moved by {moved}")
            for result in results:
                print(f"[{name}] {result.describe()}", flush=True)
            print(f"[{name}] {len(results)} haiku, {total} tokens in {seconds:.1f}s", flush=True)
        finally:
            code = stop_server(running)
            if code != 0:
                print(f"[{name}] server exited with {code}:\n{running.log_tail()}", file=sys.stderr)
    num_passed = sum(r.has_words for r in results)
    distinct = len({r.text for r in results})
    return {"model": name, "file": str(path), "passed": num_passed, "total": len(results),
            "distinct_haiku": distinct, "seconds": round(seconds, 1), "completion_tokens": total,
            "results": [dict(dataclasses.asdict(r), has_words=r.has_words) for r in results]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None,
                        help="comma-separated catalog names (default: every catalog model)")
    parser.add_argument("--minutes", default=",".join(str(m) for m in range(0, 60, 3)),
                        help="comma-separated minutes (default: 0,3,...,57: 20 values)")
    parser.add_argument("--max-tokens", type=int, default=48, help="max_tokens per haiku (default 48)")
    parser.add_argument("--temperature", type=float, default=0.7,
                        help="sampling temperature; each request is seeded with its minute (default 0.7)")
    parser.add_argument("--json", default=None, help="write the report here")
    args = parser.parse_args(argv)
    names = args.models.split(",") if args.models else list(load_catalog())
    minutes = [int(m) for m in args.minutes.split(",")]
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "max_tokens": args.max_tokens, "temperature": args.temperature, "minutes": minutes,
        "models": [],
    }
    for name in names:
        report["models"].append(run_model(name, minutes, args.max_tokens, args.temperature))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for entry in report["models"]:
        print(f"{entry['model']}: {entry['passed']}/{entry['total']} haiku contain the minute's words "
              f"({entry['distinct_haiku']} distinct)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
