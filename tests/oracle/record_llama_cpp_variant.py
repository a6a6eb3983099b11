"""Record llama.cpp's greedy generations for a goldens file under another llama.cpp configuration.

The goldens in ../shared/goldens were recorded by llama-server with its defaults (CPU, flash
attention on). llama.cpp's activations go through 8-bit quantization inside its quantized matmuls,
which makes its logits a chaotic function of tiny rounding differences: with flash attention off
(same build, same file) its own top-5 logprobs move by ~0.09 nats and its greedy path leaves the
goldens where the top-2 gap is a few tenths of a nat (docs/fidelity.md). This script records such
a variant, in the goldens' own format, so tests can tell a faithful answer from a wrong one.

Usage (needs llama.cpp built by ../shared/tools/build-llama-cpp.sh):
    python tests/oracle/record_llama_cpp_variant.py MODEL.gguf GOLDENS.json OUT.json -- -fa off
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

LLAMA_SERVER = Path(os.environ.get("LLAMA_CPP_DIR", Path.home() / ".cache/cupyserve/llama.cpp")) / "bin/llama-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record(model: str, goldens_path: str, out_path: str, server_args: list[str]) -> None:
    goldens = json.loads(Path(goldens_path).read_text())
    port = free_port()
    server = subprocess.Popen([str(LLAMA_SERVER), "-m", model, "--port", str(port), "-c", "2048",
                               "-t", "2", "--no-warmup", *server_args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        generations = []
        for gen in goldens["generations"]:
            n_predict = len(gen["steps"])
            body = {"prompt": gen["prompt_ids"], "n_predict": n_predict, "temperature": 0, "n_probs": 5,
                    "cache_prompt": False, "samplers": ["top_k"], "top_k": 1}
            reply = httpx.post(f"http://127.0.0.1:{port}/completion", json=body, timeout=600).json()
            steps = [{"id": s["id"], "logprob": s["logprob"],
                      "top": [[t["id"], t["logprob"]] for t in s["top_logprobs"]]}
                     for s in reply["completion_probabilities"]]
            generations.append({"prompt": gen["prompt"], "prompt_ids": gen["prompt_ids"],
                                "ids": [s["id"] for s in steps], "steps": steps})
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    Path(out_path).write_text(json.dumps({
        "source": f"llama.cpp llama-server build 11434, CPU, 2 threads, args {' '.join(server_args)}; "
                  f"greedy, raw pre-sampling logprobs (recorded by tests/oracle/record_llama_cpp_variant.py)",
        "model_file": goldens.get("model_file"),
        "server_args": server_args,
        "generations": generations,
    }, indent=1))


if __name__ == "__main__":
    split = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
    model, goldens_path, out_path = sys.argv[1:4]
    record(model, goldens_path, out_path, sys.argv[split + 1:])
