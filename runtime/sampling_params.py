"""Per-request sampling parameters, validated when built.

The server maps OpenAI fields onto this; errors are `ValueError`s whose first argument is the
message and whose `param` attribute names the offending field, so the HTTP layer can build the
OpenAI error shape without knowing the rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_U64 = 2**64 - 1


class ParamError(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
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
    logprobs: int | None = None  # top-N logprobs per generated token (None = off)
    prompt_logprobs: int | None = None  # top-N per prompt token (echo + logprobs)
    skip_special_tokens: bool = True
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        _check(isinstance(self.max_tokens, int) and self.max_tokens >= 1,
               "max_tokens must be an integer >= 1", "max_tokens")
        _check(0.0 <= self.temperature <= 2.0, "temperature must be between 0 and 2", "temperature")
        _check(0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]", "top_p")
        _check(isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an integer >= 0", "top_k")
        _check(0.0 <= self.min_p <= 1.0, "min_p must be between 0 and 1", "min_p")
        _check(0.0 < self.repetition_penalty <= 2.0, "repetition_penalty must be in (0, 2]",
               "repetition_penalty")
        _check(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty must be between -2 and 2",
               "presence_penalty")
        _check(-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty must be between -2 and 2",
               "frequency_penalty")
        _check(self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed <= MAX_U64),
               "seed must be an integer in [0, 2**64-1]", "seed")
        _check(len(self.stop) <= 4, "at most 4 stop sequences are allowed", "stop")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop sequences must be non-empty strings",
               "stop")
        _check(isinstance(self.min_tokens, int) and 0 <= self.min_tokens <= self.max_tokens,
               "min_tokens must be between 0 and max_tokens", "min_tokens")
        _check(self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be between 0 and 20",
               "logprobs")
        _check(self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20,
               "prompt_logprobs must be between 0 and 20", "prompt_logprobs")
        for token_id, bias in self.logit_bias:
            _check(isinstance(token_id, int) and token_id >= 0, "logit_bias keys must be token ids",
                   "logit_bias")
            _check(-100.0 <= bias <= 100.0, "logit_bias values must be between -100 and 100",
                   "logit_bias")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def num_logprobs(self) -> int:
        return self.logprobs or 0


def _check(ok: bool, message: str, param: str) -> None:
    if not ok:
        raise ParamError(message, param)
