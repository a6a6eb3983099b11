"""The engine as the HTTP layer sees it. `runtime.engine.AsyncEngine` implements this."""
from __future__ import annotations

from typing import Any, AsyncIterator, Protocol

from .outputs import EngineError, StepOutput
from .sampling_params import SamplingParams


class RequestRejected(Exception):
    """Raised by `generate` before any output when a request cannot be admitted.

    `error.status` is 400 for a request that can never fit (the message says the limit),
    503 when the server is saturated or shutting down.
    """

    def __init__(self, error: EngineError) -> None:
        super().__init__(error.message)
        self.error = error


class EngineClient(Protocol):
    model_name: str  # the id /v1/models reports
    max_model_len: int  # context length in tokens
    model_info: dict  # static facts for /v1/models: family, architecture, quant_kind, device
    tokenizer: Any  # runtime.tokenizer.Tokenizer

    @property
    def is_accepting(self) -> bool:
        """False once shutdown began: new requests get 503."""

    def health(self) -> dict[str, Any]:
        """Cheap (no device sync): family, quant_kind, device, resident, vram_bytes_used,
        kv_blocks_total, kv_blocks_free, tokenizer_kind, vocab_size, context_length, ..."""

    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        request_id: str,
        correlation_id: str | None = None,
    ) -> AsyncIterator[StepOutput]:
        """Submit one sequence; yields deltas until one has finish_reason set.

        Raises RequestRejected (on first iteration) when it cannot be admitted. Closing the
        iterator early (client disconnect) aborts the sequence; its blocks are freed at the next
        engine step.
        """

    def abort(self, request_id: str) -> bool:
        """Thread-safe and idempotent. The stream ends with finish_reason "cancelled".
        Returns whether the id was known (running, waiting or recently finished)."""
