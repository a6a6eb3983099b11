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
from .kv_cache import DEFAULT_CPU_KV_BYTES, bytes_per_block, plan_num_blocks

MIB = 1 << 20
BASE_RESERVE_BYTES = 512 * MIB  # CUDA/cuBLAS workspaces, the dequantize tile, allocator slack


class InsufficientDeviceMemory(RuntimeError):
    """The model does not fit the device (or the configured cap): a startup error."""


class InsufficientKVMemory(RuntimeError):
    """No room for the KV cache the configuration asks for: a startup error."""


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
    graphs = (sum(bucket_sizes(max_num_seqs)) * vocab_size * 4 + activations // 4) if is_using_graphs else 0
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


def device_arrays(roots: list[Any], array_type: type, max_depth: int = 6):
    """Every `array_type` reachable from `roots` through lists, tuples, dicts and object fields
    (weights hold their arrays in segments, layers in dicts), each once."""
    seen: set[int] = set()
    stack = [(root, 0) for root in roots]
    while stack:
        item, depth = stack.pop()
        if id(item) in seen or depth > max_depth:
            continue
        seen.add(id(item))
        if isinstance(item, array_type):
            yield item
        elif isinstance(item, (list, tuple)):
            stack.extend((x, depth + 1) for x in item)
        elif isinstance(item, dict):
            stack.extend((x, depth + 1) for x in item.values())
        elif hasattr(item, "__dict__") and not isinstance(item, type):
            stack.extend((x, depth + 1) for x in vars(item).values())


class EngineMemory:
    """The engine's device memory: the budget (checked before the weights are uploaded), the KV
    pool's size, the pool cap, residency and the bytes held. On the CPU only the KV sizing applies
    (a fixed default budget), the rest is a no-op."""

    def __init__(self, ops: Any, device: str, args: Any, config: Any, weight_bytes: int) -> None:
        self.ops, self.device, self.args = ops, device, args
        self.step_reserve = step_reserve_bytes(
            config.hidden_size, config.ffn_size, config.vocab_size,
            max(args.max_num_batched_tokens, args.max_num_seqs), args.max_num_seqs,
            is_using_graphs=not args.enforce_eager)
        self.budget: MemoryBudget | None = None
        self.residency: ResidencyMonitor | None = None
        if device != "cpu":
            free, total = ops.memory_info()
            self.budget = MemoryBudget.from_device(free, total, args.gpu_memory_utilization,
                                                   args.gpu_memory_limit)
            self.budget.check_weights_fit(weight_bytes, self.step_reserve)
            if args.gpu_memory_limit is not None:
                ops.set_memory_limit(args.gpu_memory_limit)

    def kv_blocks(self, kv_config: Any, max_model_len: int) -> int:
        """Blocks of the KV pool: what the budget leaves after the weights and the step reserve
        (or --kv-cache-memory), never more than every admitted sequence at full context uses."""
        args = self.args
        budget = args.kv_cache_memory
        if self.budget is not None:
            available = self.budget.available(self.ops.bytes_in_use()) - self.step_reserve
            if budget is not None and budget > available:
                raise InsufficientKVMemory(
                    f"--kv-cache-memory {budget} bytes does not fit: {max(available, 0)} bytes are "
                    f"left after the weights and the step reserve")
            budget = available if budget is None else budget
        elif budget is None:
            free, _total = self.ops.memory_info()
            budget = min(DEFAULT_CPU_KV_BYTES, free // 4) if free else DEFAULT_CPU_KV_BYTES
        needed = -(-max_model_len // args.block_size) * args.max_num_seqs
        per_block = bytes_per_block(kv_config, args.block_size)
        if budget < per_block:
            raise InsufficientKVMemory(
                f"no GPU memory left for the KV cache: {max(budget, 0)} bytes available, one "
                f"{args.block_size}-token block needs {per_block}; lower --max-num-seqs or "
                f"--max-num-batched-tokens, or raise --gpu-memory-utilization / --gpu-memory-limit")
        return min(plan_num_blocks(kv_config, args.block_size, budget), max(needed, 1))

    def hold_graphs(self, graphs: Any) -> None:
        """The decode graphs' private pool lies outside CuPy's default pool: lower the default
        pool's cap by it, so everything the server holds stays within --gpu-memory-limit."""
        if self.args.gpu_memory_limit is not None and graphs is not None:
            self.ops.set_memory_limit(self.args.gpu_memory_limit - graphs.num_bytes())

    def watch_residency(self, roots: Callable[[], list[Any]]) -> None:
        """Weights and KV (reachable from `roots()`) must be device memory, not managed or host:
        checked now (a startup error if not) and again by `is_resident`, at most once a minute."""
        if self.device == "cpu":
            return
        xp = self.ops.xp
        self.residency = ResidencyMonitor(self.ops.memory_kind, lambda: device_arrays(roots(), xp.ndarray))
        if not self.residency.check(force=True):
            raise RuntimeError(f"model memory is not resident on the GPU: {self.residency.problem}")

    def is_resident(self) -> bool:
        return self.residency is None or self.residency.check()

    def bytes_used(self, graphs: Any) -> int:
        """Device bytes the server holds: arrays in CuPy's pool plus the decode graphs' pool."""
        if self.device == "cpu":
            return 0
        return self.ops.bytes_in_use() + (graphs.num_bytes() if graphs is not None else 0)
