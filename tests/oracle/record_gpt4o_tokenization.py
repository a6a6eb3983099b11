"""Record llama.cpp's `llama-tokenize` ids for the synthetic gpt-4o vocabulary as a committed fixture.

The vocabulary (make_synthetic_gpt_oss_gguf.py) declares `tokenizer.ggml.pre = gpt-4o`, so
llama.cpp splits text with its o200k regex before BPE; the texts below exercise each branch of
that regex (case runs and contractions, digit groups of 1-3, punctuation runs, whitespace and
newline runs, marks, scripts without case, emoji) plus the harmony special tokens. Each text is
tokenized with special-token parsing (llama-tokenize's default, `ids`) and with
`--no-parse-special` (`ids_no_special`: llama.cpp still recognises <|start|>, <|message|>,
<|channel|>, <|end|>, <|constrain|> there, which it marks user-defined for gpt-oss vocabularies).
Output: tests/goldens/data/synthetic-gpt-oss-tokenize.json with the fixture's content_hash.

    python tests/oracle/record_gpt4o_tokenization.py   # needs llama.cpp's llama-tokenize
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from make_synthetic_family_gguf import content_hash  # noqa: E402
from make_synthetic_gpt_oss_gguf import FIXTURE, LLAMA_CPP_BIN  # noqa: E402

OUT = FIXTURE.parent / "synthetic-gpt-oss-tokenize.json"
TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "HelloWorld iPhone McDonald's XMLHttpRequest camelCaseWord",
    "don't DON'T I'm you're we've they'll he'd It's SHE'LL",
    "1234567 3.14159 1,000,000 007 12 345 6789",
    "x1y22z333w4444",
    "!!!???... --- *** ((())) a/b\\c @#$%^&*",
    "   leading spaces",
    "trailing spaces   ",
    "tabs\tand\t\tmore\ttabs",
    "line one\nline two\n\n\nline five\r\nwindows",
    "  \n  \n\t\n",
    "Ça va? Élève naïve façade Ångström",
    "Γειά σου Κόσμε Привет мир",
    "日本語のテキストと中文文本",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "e\u0301 a\u0308 combining marks",
    "emoji 🙂👍🏽 🇫🇷 ✨",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant",
    "<|channel|>analysis<|message|>thinking<|end|><|return|>",
    "<|constrain|>json<|startoftext|>x<|endoftext|>",
    "no<|message|>space<|call|>between",
    "ALLCAPS lowercase MiXeD cAsE",
    "'s 't 're 've 'm 'll 'd",
    "",
]


def llama_tokenize(text: str, parse_special: bool) -> list[int]:
    args = [str(LLAMA_CPP_BIN / "llama-tokenize"), "-m", str(FIXTURE), "--stdin", "--ids",
            "--no-bos", "--log-disable", "--no-escape"]
    if not parse_special:
        args.append("--no-parse-special")
    out = subprocess.run(args, input=text.encode("utf-8"), capture_output=True, check=True).stdout
    return ast.literal_eval(out.decode().strip().splitlines()[-1])


def main() -> None:
    cases = [{"text": t, "ids": llama_tokenize(t, True), "ids_no_special": llama_tokenize(t, False)}
             for t in TEXTS]
    OUT.write_text(json.dumps({
        "source": "llama.cpp llama-tokenize build 11434 --stdin --ids --no-bos --no-escape "
                  "[--no-parse-special] (recorded by tests/oracle/record_gpt4o_tokenization.py)",
        "model_file": FIXTURE.name,
        "content_hash": content_hash(FIXTURE),
        "cases": cases,
    }, indent=1, ensure_ascii=False))
    print(f"{OUT}: {len(cases)} texts, {sum(len(c['ids']) for c in cases)} tokens")


if __name__ == "__main__":
    main()
