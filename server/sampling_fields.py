"""Sampling fields shared by /v1/completions and /v1/chat/completions, and their SamplingParams.

Parsing checks JSON types only; value ranges are checked once, by `SamplingParams` itself, whose
`ParamError.param` names the field for the 400 response. The server-only rules (n, the max_tokens
cap against the context, seeds per choice) live here and in `token_budget.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cupyserve.runtime.sampling_params import MAX_U64, ParamError, SamplingParams

from .errors import invalid_request
from .request_fields import check_range, get_bool, get_int, get_number

MAX_N = 16  # choices per prompt; each is a full sequence in the batch
MAX_STOP = 4


@dataclass(frozen=True)
class SamplingFields:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    n: int = 1

    def __post_init__(self) -> None:
        check_range(1 <= self.n <= MAX_N, "n", f"must be between 1 and {MAX_N}")
        check_range(len(self.stop) <= MAX_STOP, "stop", f"may hold at most {MAX_STOP} sequences")

    def seed_for_choice(self, choice: int) -> int | None:
        """Choice i of a request with `seed` s samples with seed s+i (mod 2**64): with n > 1 the
        choices differ, and the same request repeated gives the same choices."""
        if self.seed is None or choice == 0 or not 0 <= self.seed <= MAX_U64:
            return self.seed
        return (self.seed + choice) % (MAX_U64 + 1)

    def to_params(self, *, max_tokens: int, choice: int, vocab_size: int,
                  logprobs: int | None = None, prompt_logprobs: int | None = None) -> SamplingParams:
        """Build validated SamplingParams; any violation becomes a 400 naming the field."""
        for token_id, _ in self.logit_bias:
            check_range(token_id < vocab_size, "logit_bias", f"key {token_id} is not a token id "
                                                            f"(vocabulary size {vocab_size})")
        for token_id in self.stop_token_ids:
            check_range(0 <= token_id < vocab_size, "stop_token_ids",
                        f"holds {token_id}, not a token id (vocabulary size {vocab_size})")
        try:
            return SamplingParams(
                max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
                top_k=self.top_k, min_p=self.min_p, repetition_penalty=self.repetition_penalty,
                presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                logit_bias=self.logit_bias, seed=self.seed_for_choice(choice), stop=self.stop,
                stop_token_ids=self.stop_token_ids, ignore_eos=self.ignore_eos,
                min_tokens=self.min_tokens, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
                skip_special_tokens=self.skip_special_tokens,
            )
        except ParamError as exc:
            raise invalid_request(str(exc), param=exc.param) from None


def parse_sampling_fields(body: Mapping[str, Any]) -> SamplingFields:
    top_k = get_int(body, "top_k", 0)
    if top_k == -1:
        top_k = 0  # vLLM spells "disabled" as -1
    return SamplingFields(
        temperature=get_number(body, "temperature", 1.0),
        top_p=get_number(body, "top_p", 1.0),
        top_k=top_k,
        min_p=get_number(body, "min_p", 0.0),
        repetition_penalty=get_number(body, "repetition_penalty", 1.0),
        presence_penalty=get_number(body, "presence_penalty", 0.0),
        frequency_penalty=get_number(body, "frequency_penalty", 0.0),
        logit_bias=_parse_logit_bias(body.get("logit_bias")),
        seed=get_int(body, "seed", None),
        stop=_parse_stop(body.get("stop")),
        stop_token_ids=_parse_token_id_list(body.get("stop_token_ids"), "stop_token_ids"),
        ignore_eos=get_bool(body, "ignore_eos", False),
        min_tokens=get_int(body, "min_tokens", 0),
        skip_special_tokens=get_bool(body, "skip_special_tokens", True),
        n=get_int(body, "n", 1),
    )


def _parse_stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise invalid_request("'stop' must be a string or a list of strings", param="stop",
                              code="invalid_type")
    # An empty stop string could never be matched meaningfully; OpenAI accepts and ignores it.
    return tuple(s for s in value if s)


def _parse_logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise invalid_request("'logit_bias' must be an object mapping token ids to numbers",
                              param="logit_bias", code="invalid_type")
    pairs = []
    for key, bias in value.items():
        try:
            token_id = int(key)
        except ValueError:
            raise invalid_request(f"'logit_bias' key {key!r} is not a token id",
                                  param="logit_bias") from None
        if isinstance(bias, bool) or not isinstance(bias, (int, float)):
            raise invalid_request(f"'logit_bias' value for {key!r} must be a number",
                                  param="logit_bias", code="invalid_type")
        check_range(token_id >= 0, "logit_bias", f"key {key!r} is not a token id")
        pairs.append((token_id, float(bias)))
    return tuple(sorted(pairs))


def _parse_token_id_list(value: Any, name: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool)
                                              for t in value):
        raise invalid_request(f"'{name}' must be a list of token ids", param=name, code="invalid_type")
    return tuple(value)
