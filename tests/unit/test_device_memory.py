"""GPU memory budgeting and the residency monitor (pure arithmetic, so tested on the CPU; the
GPU tests in tests/kernels/test_cuda_memory.py run them against a real device)."""
from __future__ import annotations

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
