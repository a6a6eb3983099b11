"""Logprobs in the two OpenAI shapes: legacy completions (parallel arrays) and chat (content list).

Token strings come from the tokenizer's per-token text, or are written "token_id:N" when the
client asked for vLLM's `return_tokens_as_token_ids` (lossless for tokens that are not valid
UTF-8 on their own). Logprobs are clamped to -9999.0 because JSON has no -Infinity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from cupyserve.runtime.outputs import TokenLogprob

LOGPROB_FLOOR = -9999.0


def finite_logprob(value: float) -> float:
    return LOGPROB_FLOOR if math.isnan(value) or value < LOGPROB_FLOOR else float(value)


@dataclass(frozen=True)
class TokenNamer:
    """How token ids become strings in logprobs output."""

    tokenizer: Any
    as_token_ids: bool = False

    def text(self, token_id: int) -> str:
        if self.as_token_ids:
            return f"token_id:{token_id}"
        return self.tokenizer.token_text(token_id)

    def bytes(self, token_id: int) -> list[int]:
        return list(self.tokenizer.token_bytes(token_id))


def completion_logprobs(namer: TokenNamer, token_ids: Sequence[int],
                        entries: Sequence[TokenLogprob | None], start_offset: int,
                        num_top: int) -> tuple[dict, int]:
    """The `logprobs` object of a completion choice for these tokens, and the next text offset.

    `entries[i]` is None for a position without a logprob (the first prompt token). `top_logprobs`
    holds the `num_top` best tokens plus the chosen one when it is not among them (as OpenAI and
    vLLM do), so it has at most num_top + 1 keys.
    """
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    offset = start_offset
    for token_id, entry in zip(token_ids, entries):
        piece = namer.text(token_id)
        tokens.append(piece)
        text_offset.append(offset)
        offset += len(piece)
        if entry is None:
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        token_logprobs.append(finite_logprob(entry.logprob))
        top = {namer.text(t): finite_logprob(lp) for t, lp in entry.top[:num_top]}
        top.setdefault(piece, finite_logprob(entry.logprob))
        top_logprobs.append(top)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": text_offset}, offset


def merge_completion_logprobs(first: dict, second: dict) -> dict:
    return {key: first[key] + second[key] for key in first}


def chat_logprobs_content(namer: TokenNamer, entries: Sequence[TokenLogprob],
                          num_top: int) -> list[dict]:
    """`choices[i].logprobs.content` of a chat response: one item per generated token."""
    content = []
    for entry in entries:
        content.append({
            "token": namer.text(entry.token_id),
            "logprob": finite_logprob(entry.logprob),
            "bytes": namer.bytes(entry.token_id),
            "top_logprobs": [
                {"token": namer.text(t), "logprob": finite_logprob(lp), "bytes": namer.bytes(t)}
                for t, lp in entry.top[:num_top]
            ],
        })
    return content
