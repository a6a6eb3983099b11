"""Record llama.cpp's greedy generations on the synthetic qwen2/phi3/gpt2/gpt-oss fixtures as committed goldens.

For each family and quant mix of make_synthetic_family_gguf.py, the fixture is written, served by
llama.cpp's llama-server (build 11434, CPU, 2 threads) once with its defaults (flash attention
on) and once with `-fa off` (llama.cpp's own configuration noise, docs/fidelity.md), and each
prompt is generated greedily for 16 steps with the top-5 raw logprobs of every step (cut
before the first token whose probabilities llama-server leaves out: a byte token ending inside
a UTF-8 character; `generated_ids` keeps the whole continuation). Output:
tests/goldens/data/synthetic-<family>-<quant>.json (flash attention on) and
synthetic-<family>-<quant>.fa-off.json, in the format of ../shared/goldens, plus `input_ids`
(what the model saw: BOS + prompt_ids where the vocab adds BOS) and the fixture's
`content_hash`, so the test knows it regenerated the very file llama.cpp read.

gpt-oss (`gpt-oss` on the command line) has one mix, MXFP4_MOE: make_synthetic_gpt_oss_gguf.py
rewrites the committed fixture tests/goldens/data/synthetic-gpt-oss-mxfp4_moe.gguf with
llama-quantize (bit-identical on a rerun) and it is recorded as synthetic-gpt-oss-mxfp4_moe[.fa-off].json.

Usage (needs llama.cpp built by ../shared/tools/build-llama-cpp.sh):
    python tests/oracle/record_family_goldens.py [FAMILY ...]   # qwen2 phi3 gpt-oss
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from make_synthetic_family_gguf import FAMILIES, quants_of, write  # noqa: E402
from make_synthetic_gpt_oss_gguf import FIXTURE as GPT_OSS_FIXTURE  # noqa: E402
from make_synthetic_gpt_oss_gguf import write_quantized as write_gpt_oss  # noqa: E402
from record_llama_cpp_variant import LLAMA_SERVER, free_port  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "goldens" / "data"
STEPS = 16
PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "日本語のテキストと中文文本",
    "1, 2, 3, 4,",
]
VARIANTS = {"": [], ".fa-off": ["-fa", "off"]}


def serve(model: Path, args: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([str(LLAMA_SERVER), "-m", str(model), "--port", str(port), "-c", "2048",
                               "-t", "2", "--no-warmup", *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        if server.poll() is not None:
            raise RuntimeError(f"llama-server exited with {server.returncode} on {model}")
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError("llama-server did not come up")


def record_one(model: Path, args: list[str], content_hash: str, name: str) -> dict:
    server, url = serve(model, args)
    try:
        generations = []
        for prompt in PROMPTS:
            def tokenize(add_special: bool) -> list[int]:
                body = {"content": prompt, "add_special": add_special, "parse_special": True}
                return httpx.post(f"{url}/tokenize", json=body).json()["tokens"]
            prompt_ids, input_ids = tokenize(False), tokenize(True)
            body = {"prompt": input_ids, "n_predict": STEPS, "temperature": 0, "n_probs": 5,
                    "cache_prompt": False, "samplers": ["top_k"], "top_k": 1, "return_tokens": True}
            reply = httpx.post(f"{url}/completion", json=body, timeout=600).json()
            steps = [{"id": s["id"], "logprob": s["logprob"],
                      "top": [[t["id"], t["logprob"]] for t in s["top_logprobs"]]}
                     for s in reply["completion_probabilities"]]
            # llama-server leaves out the probabilities of a token that ends inside a UTF-8
            # character (a byte token) and goes on with the next one, so steps and generated
            # tokens can drift apart: keep only the steps before the first such token.
            tokens = reply["tokens"]
            aligned = next((i for i, (s, t) in enumerate(zip(steps, tokens)) if s["id"] != t),
                           min(len(steps), len(tokens)))
            steps = steps[:aligned]
            generations.append({"prompt": prompt, "prompt_ids": prompt_ids, "input_ids": input_ids,
                                "ids": tokens[:aligned], "generated_ids": tokens,
                                "steps": steps})
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    return {
        "source": f"llama.cpp llama-server build 11434, CPU, 2 threads, args {' '.join(args) or '(defaults)'}; "
                  f"greedy, raw pre-sampling logprobs (recorded by tests/oracle/record_family_goldens.py)",
        "model_file": name,
        "content_hash": content_hash,
        "server_args": args,
        "generations": generations,
    }


def record_variants(model: Path, content_hash: str, name: str) -> None:
    for suffix, args in VARIANTS.items():
        golden = record_one(model, args, content_hash, f"{name}.gguf")
        (DATA / f"{name}{suffix}.json").write_text(json.dumps(golden, indent=1))
        top1 = [s["logprob"] for g in golden["generations"] for s in g["steps"]]
        gaps = [s["top"][0][1] - s["top"][1][1] for g in golden["generations"] for s in g["steps"]]
        print(f"{name}{suffix}: mean top-1 logprob {sum(top1) / len(top1):.2f}, "
              f"steps with gap < 0.25: {sum(g < 0.25 for g in gaps)}/{len(gaps)}", flush=True)


def main(families: list[str]) -> None:
    if "gpt-oss" in families:
        # Quantized by llama-quantize and committed (make_synthetic_gpt_oss_gguf.py).
        families = [f for f in families if f != "gpt-oss"]
        record_variants(GPT_OSS_FIXTURE, write_gpt_oss(GPT_OSS_FIXTURE), GPT_OSS_FIXTURE.stem)
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            for quant in quants_of(family):
                name = f"synthetic-{family}-{quant}"
                model = Path(tmp) / f"{name}.gguf"
                record_variants(model, write(family, quant, model), name)
                model.unlink()


if __name__ == "__main__":
    main(sys.argv[1:] or [*FAMILIES, "gpt-oss"])
