"""CPU decode throughput of the engine on SmolLM2: aggregate decode tokens/s at 1, 8 and 32
concurrent streams (batch-1 decode is the first row), for docs/benchmarks.md.

A thin wrapper over `cupyserve bench offline --device cpu` (runtime/bench.py), with defaults that
finish in a few minutes on a 2-core machine, plus the facts a reader needs to compare numbers:
date, core count and BLAS threads. Compare batch-1 decode with llama.cpp's `llama-bench -p 0
-n 64 -t <cores>` (tg64) on the same GGUF.

    OPENBLAS_NUM_THREADS=2 python benchmarks/cpu_decode.py --json /tmp/cpu_decode.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile

from cupyserve.runtime.bench import main as bench_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="catalog name or .gguf path")
    parser.add_argument("--num-seqs", default="1,8,32", help="concurrency levels (default: 1,8,32)")
    parser.add_argument("--prompt-len", type=int, default=32, help="prompt tokens per stream")
    parser.add_argument("--gen-len", type=int, default=64, help="generated tokens per stream (tg64)")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        raw_path = os.path.join(tmp, "bench.json")
        code = bench_main(["offline", "--device", "cpu", "--model", args.model,
                           "--num-seqs", args.num_seqs, "--prompt-len", str(args.prompt_len),
                           "--gen-len", str(args.gen_len), "--json", raw_path])
        with open(raw_path) as f:
            report = json.load(f)
    report.update(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  cpu_count=os.cpu_count(), load_average=os.getloadavg(),
                  openblas_num_threads=os.environ.get("OPENBLAS_NUM_THREADS", "(default: all cores)"),
                  command=" ".join([os.path.basename(sys.executable), *sys.argv]))
    print(json.dumps({k: v for k, v in report.items() if k != "results"}))
    print("| streams | decode tok/s (aggregate) | prefill tok/s |")
    print("| ---: | ---: | ---: |")
    for row in report["results"]:
        print(f"| {row['num_seqs']} | {row['decode_tokens_per_s']} | {row['prefill_tokens_per_s']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return code


if __name__ == "__main__":
    sys.exit(main())
