"""Perplexity with llama.cpp's llama-perplexity protocol, run through the real engine.

Tokenize the whole text once with the model's special tokens (BOS first when the tokenizer adds
one, as llama-perplexity's `common_tokenize(..., add_special=true)` does: this shifts every chunk
boundary by one token); cut it into consecutive chunks of `ctx` tokens (the remainder is dropped);
when the tokenizer adds BOS, the first token of every chunk is replaced by BOS. Each chunk is
evaluated independently from an empty cache; the tokens at
positions ctx/2 + 1 .. ctx - 1 are scored, each predicted from every token before it in its chunk.
PPL = exp(mean NLL); the standard error is propagated from the NLL variance like llama.cpp.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .engine import LLMEngine
from .engine_args import EngineArgs
from .log import ProgressBar, log_event
from .sampling_params import SamplingParams


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    stderr: float
    num_chunks: int
    num_scored_tokens: int
    ctx: int
    seconds: float


def chunk_tokens(token_ids: list[int], ctx: int, bos_id: int | None) -> list[list[int]]:
    chunks = [list(token_ids[i : i + ctx]) for i in range(0, len(token_ids) - ctx + 1, ctx)]
    if bos_id is not None:
        for chunk in chunks:
            chunk[0] = bos_id
    return chunks


def evaluate_perplexity(engine: LLMEngine, text: str, ctx: int, show_progress: bool = True) -> PerplexityResult:
    if ctx < 4 or ctx > engine.max_model_len - 1:
        raise ValueError(f"ctx must be between 4 and {engine.max_model_len - 1}")
    tokenizer = engine.tokenizer
    token_ids = tokenizer.encode(text, add_special_tokens=True, parse_special=False)
    chunks = chunk_tokens(token_ids, ctx, tokenizer.bos_id if tokenizer.add_bos else None)
    if not chunks:
        raise ValueError(f"the text has {len(token_ids)} tokens, fewer than one chunk of {ctx}")
    start = time.monotonic()
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    first = ctx // 2
    nll_by_chunk: dict[int, list[float]] = {}
    bar = ProgressBar("perplexity", len(chunks))
    for index, chunk in enumerate(chunks):
        engine.add_request(f"ppl-{index}", chunk, params)
    while engine.has_unfinished():
        for out in engine.step():
            if out.prompt_logprobs is not None:
                index = int(out.request_id.split("-")[1])
                scored = out.prompt_logprobs[first + 1 : ctx]
                nll_by_chunk[index] = [-entry.logprob for entry in scored]
                bar.update(len(nll_by_chunk))
    nll = np.array([v for i in sorted(nll_by_chunk) for v in nll_by_chunk[i]], dtype=np.float64)
    mean = float(nll.mean())
    # llama.cpp: stderr of mean NLL, then through exp to PPL.
    variance = float((nll * nll).mean() - mean * mean)
    stderr_nll = math.sqrt(max(variance, 0.0) / max(len(nll) - 1, 1))
    ppl = math.exp(mean)
    result = PerplexityResult(ppl=ppl, stderr=ppl * stderr_nll, num_chunks=len(chunks),
                              num_scored_tokens=len(nll), ctx=ctx,
                              seconds=time.monotonic() - start)
    log_event("perplexity", ppl=round(ppl, 4), chunks=len(chunks), ctx=ctx,
              seconds=round(result.seconds, 3))
    return result


def run_perplexity(model: str, file: str, ctx: int, device: str = "auto") -> PerplexityResult:
    """CLI entry: load `model`, score the text in `file`."""
    with open(file, encoding="utf-8") as f:
        text = f.read()
    engine = LLMEngine(EngineArgs(model=model, device=device, max_num_seqs=8,
                                  max_num_batched_tokens=max(512, ctx), enable_prefix_caching=False))
    return evaluate_perplexity(engine, text, ctx)
