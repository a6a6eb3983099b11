"""Per-request output processing: detokenize, check stop conditions, collect logprobs, timing."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .detokenizer import IncrementalDetokenizer, StopStringMatcher
from .outputs import EngineError, StepOutput, TokenLogprob
from .sequence import Sequence


@dataclass
class RequestState:
    """Everything the engine tracks about one sequence besides its tokens.

    Owned by the engine thread. `pending` accumulates the delta not yet handed to the client.
    """

    seq: Sequence
    detokenizer: IncrementalDetokenizer
    stop_matcher: StopStringMatcher
    eos_ids: frozenset[int]
    rng: np.random.Generator | None
    max_model_len: int
    correlation_id: str | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    is_prompt_logprobs_sent: bool = False
    pending: StepOutput | None = None

    # Sampler protocol (runtime.sampler.SamplingState)
    @property
    def params(self):
        return self.seq.params

    @property
    def prompt_ids(self) -> list[int]:
        return self.seq.prompt_ids

    @property
    def output_ids(self) -> list[int]:
        return self.seq.output_ids

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self.eos_ids

    @property
    def request_id(self) -> str:
        return self.seq.request_id

    def delta(self) -> StepOutput:
        if self.pending is None:
            self.pending = StepOutput(request_id=self.request_id,
                                      num_prompt_tokens=self.seq.num_prompt_tokens)
        return self.pending

    def take_output(self) -> StepOutput | None:
        out, self.pending = self.pending, None
        if out is not None:
            out.num_generated_tokens = len(self.seq.output_ids)
            out.num_cached_tokens = self.seq.num_cached_tokens
            if self.prompt_logprobs is not None and not self.is_prompt_logprobs_sent:
                out.prompt_logprobs = self.prompt_logprobs
                self.is_prompt_logprobs_sent = True
        return out

    def on_token(self, token_id: int, logprob: TokenLogprob | None) -> str | None:
        """Record a new output token (already appended to seq.output_ids); returns the finish
        reason if this token ends the request, else None."""
        now = time.monotonic()
        if self.first_token_time is None:
            self.first_token_time = now
        self.last_token_time = now
        params = self.seq.params
        out = self.delta()
        out.token_ids.append(token_id)
        if logprob is not None:
            out.logprobs.append(logprob)
        num_outputs = len(self.seq.output_ids)
        if token_id in self.eos_ids and not params.ignore_eos:  # the sampler masks EOS before min_tokens
            self._finish_text(out)
            out.stop_reason = None
            return "stop"
        if token_id in params.stop_token_ids:
            self._finish_text(out)
            out.stop_reason = token_id
            return "stop"
        emitted, matched = self.stop_matcher.feed(self.detokenizer.push(token_id))
        out.text += emitted
        if matched is not None and num_outputs >= params.min_tokens:
            out.stop_reason = matched
            return "stop"
        if num_outputs >= params.max_tokens or self.seq.num_tokens >= self.max_model_len:
            self._finish_text(out)
            return "length"
        return None

    def _finish_text(self, out: StepOutput) -> None:
        emitted, _ = self.stop_matcher.feed(self.detokenizer.flush())
        out.text += emitted + self.stop_matcher.flush()

    def finish(self, reason: str, error: EngineError | None = None) -> StepOutput:
        out = self.delta()
        if reason in ("cancelled", "error"):
            pass  # a cut-off stream keeps what was already sent; nothing held back is released
        out.finish_reason = reason
        out.error = error
        return out
