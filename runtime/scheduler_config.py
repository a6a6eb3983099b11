"""Limits the scheduler packs each step under, validated when built."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    """Per-step batch limits.

    `max_num_batched_tokens` must be >= `max_num_seqs`: every running sequence gets its decode
    token before any prefill chunk, so this is what lets a running stream never wait a step.
    """

    max_num_seqs: int = 64  # sequences admitted (running) at once
    max_num_batched_tokens: int = 512  # tokens fed to the model in one step, prefill + decode
    max_model_len: int = 2048  # prompt + generated tokens of one sequence
    block_size: int = 16  # KV slots per block; must match the block manager

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}) so every running sequence can decode each step")
