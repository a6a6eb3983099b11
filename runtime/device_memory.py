"""How much device memory the server may use, and checks that what it holds is device memory.

Budget (`--gpu-memory-utilization U`, `--gpu-memory-limit L`): everything the server allocates
on the GPU (weights, KV pool, CUDA graphs, step scratch) must fit in
`cap = min(U * total, L)` and in what the device has free. The weights are checked before any
upload (a model that cannot fit is a startup error naming required and available bytes); the
KV pool then gets what is left after a reserve for step scratch and the decode graphs.

Residency: weights and KV must be plain device memory, never managed (unified) or host memory
that the driver would page over PCIe. `ResidencyMonitor` asks the driver about every array at
load and again when `/health` is read, at most once per `interval_s`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .decode_graphs import bucket_sizes

MIB = 1 << 20
BASE_RESERVE_BYTES = 512 * MIB  # CUDA/cuBLAS workspaces, the dequantize tile, allocator slack


class InsufficientDeviceMemory(RuntimeError):
    """The model does not fit the device (or the configured cap): a startup error."""


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / (1 << 30):.2f} GiB"


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes the server may allocate in all: min(utilization * total, limit), within free memory."""

    cap_bytes: int
    free_bytes: int
    total_bytes: int

    @classmethod
    def from_device(cls, free_bytes: int, total_bytes: int, utilization: float,
                    limit_bytes: int | None) -> MemoryBudget:
        if not 0.0 < utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        cap = int(total_bytes * utilization)
        if limit_bytes is not None:
            cap = min(cap, limit_bytes)
        return cls(cap_bytes=cap, free_bytes=free_bytes, total_bytes=total_bytes)

    def available(self, used_bytes: int) -> int:
        """What more may be allocated once `used_bytes` (of this server) are held."""
        return max(0, min(self.cap_bytes - used_bytes, self.free_bytes - used_bytes))

    def check_weights_fit(self, weight_bytes: int, scratch_bytes: int) -> None:
        available = self.available(0)
        required = weight_bytes + scratch_bytes
        if required > available:
            raise InsufficientDeviceMemory(
                f"not enough GPU memory for the model: {required} bytes required "
                f"({_gib(weight_bytes)} of weights + {_gib(scratch_bytes)} scratch) but {available} "
                f"bytes ({_gib(available)}) available (free {_gib(self.free_bytes)} of "
                f"{_gib(self.total_bytes)}, cap {_gib(self.cap_bytes)} from "
                f"--gpu-memory-utilization / --gpu-memory-limit)")


def step_reserve_bytes(hidden_size: int, ffn_size: int, vocab_size: int, max_num_batched_tokens: int,
                       max_num_seqs: int, is_using_graphs: bool) -> int:
    """Memory kept out of the KV pool for one step's intermediates and the decode graphs.

    A prefill step holds a few [tokens, max(hidden, 2 * ffn)] float32 activations at once and
    [sampled rows, vocab] logits; each decode graph keeps its own [bucket, vocab] logits and all
    graphs share one set of intermediates (their private pool)."""
    width = max(hidden_size, 2 * ffn_size)
    activations = 8 * max_num_batched_tokens * width * 4
    logits = max_num_seqs * vocab_size * 4
    graphs = sum(bucket_sizes(max_num_seqs)) * vocab_size * 4 + activations // 4 if is_using_graphs else 0
    return BASE_RESERVE_BYTES + activations + logits + graphs


class ResidencyMonitor:
    """Re-checks that arrays are device memory, at most every `interval_s` seconds."""

    def __init__(self, memory_kind: Callable[[Any], str], arrays: Callable[[], Iterable[Any]],
                 interval_s: float = 60.0) -> None:
        self._memory_kind = memory_kind
        self._arrays = arrays
        self.interval_s = interval_s
        self._checked_at = float("-inf")
        self.problem: str | None = None  # first array found not resident, with its memory kind

    def check(self, force: bool = False) -> bool:
        now = time.monotonic()
        if force or now - self._checked_at >= self.interval_s:
            self._checked_at = now
            self.problem = None
            for index, array in enumerate(self._arrays()):
                kind = self._memory_kind(array)
                if kind != "device":
                    self.problem = f"array {index} of shape {getattr(array, 'shape', '?')} is {kind} memory"
                    break
        return self.problem is None
