"""GPU memory budgeting and the residency monitor (pure arithmetic, so tested on the CPU; the
GPU tests in tests/kernels/test_cuda_memory.py run them against a real device)."""
from __future__ import annotations

import numpy as np
import pytest

from cupyserve.runtime.device_memory import (BASE_RESERVE_BYTES, InsufficientDeviceMemory, MemoryBudget,
                                             ResidencyMonitor, step_reserve_bytes)

GIB = 1 << 30


def test_cap_is_the_smaller_of_utilization_and_limit():
    assert MemoryBudget.from_device(70 * GIB, 80 * GIB, 0.9, None).cap_bytes == int(72 * GIB)
    assert MemoryBudget.from_device(70 * GIB, 80 * GIB, 0.9, 24 * GIB).cap_bytes == 24 * GIB


def test_available_respects_both_cap_and_free_memory():
    budget = MemoryBudget.from_device(free_bytes=10 * GIB, total_bytes=80 * GIB, utilization=0.9,
                                      limit_bytes=None)
    assert budget.available(0) == 10 * GIB  # another process holds the rest of the card
    assert budget.available(4 * GIB) == 6 * GIB
    capped = MemoryBudget.from_device(70 * GIB, 80 * GIB, 0.9, 24 * GIB)
    assert capped.available(20 * GIB) == 4 * GIB
    assert capped.available(30 * GIB) == 0


def test_weights_that_do_not_fit_name_required_and_available_bytes():
    budget = MemoryBudget.from_device(70 * GIB, 80 * GIB, 0.9, 12 * GIB)
    budget.check_weights_fit(11 * GIB, GIB // 2)
    with pytest.raises(InsufficientDeviceMemory) as info:
        budget.check_weights_fit(12 * GIB, GIB)
    message = str(info.value)
    assert f"{13 * GIB} bytes required" in message and f"{12 * GIB} bytes" in message
    assert "--gpu-memory-limit" in message


def test_step_reserve_grows_with_batch_vocab_and_graphs():
    small = step_reserve_bytes(576, 1536, 49152, 512, 1, is_using_graphs=False)
    assert small > BASE_RESERVE_BYTES
    assert step_reserve_bytes(576, 1536, 49152, 2048, 1, False) > small
    eager = step_reserve_bytes(576, 1536, 49152, 512, 256, False)
    graphs = step_reserve_bytes(576, 1536, 49152, 512, 256, True)
    assert graphs > eager > small
    # Each bucket keeps [bucket, vocab] float32 logits: 256 sequences need at least 256 rows' worth.
    assert graphs - eager >= 256 * 49152 * 4


def test_residency_monitor_reports_the_first_non_device_array_and_rechecks_by_interval():
    kinds = {"a": "device", "b": "device"}
    arrays = ["a", "b"]
    monitor = ResidencyMonitor(lambda array: kinds[array], lambda: arrays, interval_s=3600)
    assert monitor.check(force=True)
    kinds["b"] = "managed"
    assert monitor.check()  # within the interval: the cached answer
    assert not monitor.check(force=True)
    assert "array 1" in monitor.problem and "managed" in monitor.problem
    kinds["b"] = "device"
    assert monitor.check(force=True) and monitor.problem is None


class _Stub:
    """The four numbers EngineMemory reads from an op set, set by each test (the real CUDA op set
    runs this code in tests/kernels/test_cuda_memory.py on the GPU)."""

    xp = np

    def __init__(self, free: int, total: int) -> None:
        self.free, self.total, self.in_use, self.limit = free, total, 0, None

    def memory_info(self):
        return self.free, self.total

    def bytes_in_use(self):
        return self.in_use

    def set_memory_limit(self, num_bytes):
        self.limit = num_bytes

    def memory_kind(self, array):
        return "device"


def _args(**overrides):
    from cupyserve.runtime.engine_args import EngineArgs

    return EngineArgs(**{"max_num_seqs": 4, **overrides})


def _config():
    from types import SimpleNamespace

    return SimpleNamespace(hidden_size=576, ffn_size=1536, vocab_size=49152, num_layers=30,
                           num_kv_heads=3, head_dim=64)


def test_engine_memory_sizes_kv_from_what_the_cap_leaves_and_keeps_graphs_inside_it():
    from types import SimpleNamespace

    from cupyserve.runtime.device_memory import EngineMemory
    from cupyserve.runtime.kv_cache import bytes_per_block

    ops = _Stub(free=70 * GIB, total=80 * GIB)
    memory = EngineMemory(ops, "cuda", _args(gpu_memory_limit=4 * GIB), _config(), weight_bytes=GIB)
    assert ops.limit == 4 * GIB
    ops.in_use = GIB  # the weights, uploaded
    per_block = bytes_per_block(_config(), 16)
    blocks = memory.kv_blocks(_config(), max_model_len=1 << 20)
    assert blocks == (4 * GIB - GIB - memory.step_reserve) // per_block
    memory.hold_graphs(SimpleNamespace(num_bytes=lambda: 100 << 20))
    assert ops.limit == 4 * GIB - (100 << 20)
    assert memory.bytes_used(SimpleNamespace(num_bytes=lambda: 100 << 20)) == GIB + (100 << 20)
    memory.watch_residency(lambda: [np.zeros(4)])
    assert memory.is_resident()


def test_engine_memory_errors_name_the_sizes():
    from cupyserve.runtime.device_memory import EngineMemory, InsufficientKVMemory

    with pytest.raises(InsufficientDeviceMemory, match="bytes required"):
        EngineMemory(_Stub(free=70 * GIB, total=80 * GIB), "cuda", _args(gpu_memory_limit=GIB), _config(),
                     weight_bytes=2 * GIB)
    ops = _Stub(free=70 * GIB, total=80 * GIB)
    memory = EngineMemory(ops, "cuda", _args(kv_cache_memory=8 * GIB), _config(), weight_bytes=GIB)
    ops.in_use = 71 * GIB  # more than the free memory seen at startup: nothing is left
    with pytest.raises(InsufficientKVMemory, match="--kv-cache-memory"):
        memory.kv_blocks(_config(), 4096)


def test_engine_memory_on_cpu_uses_the_default_kv_budget_and_holds_no_device_bytes():
    from cupyserve.runtime.device_memory import EngineMemory

    memory = EngineMemory(_Stub(free=8 * GIB, total=16 * GIB), "cpu", _args(), _config(), weight_bytes=GIB)
    assert memory.budget is None and memory.bytes_used(None) == 0 and memory.is_resident()
    assert memory.kv_blocks(_config(), 2048) == 4 * 2048 // 16  # capped by what 4 sequences can use
