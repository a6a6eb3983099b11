"""GPU memory: weights and KV are resident device memory, /health's numbers are true, and a model
that does not fit the cap is a clear startup error (engine and `cupyserve serve`, exit code 1)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from test_cuda_model import _model_path

pytestmark = pytest.mark.gpu


def _engine(**overrides):
    from cupyserve.runtime.engine import LLMEngine
    from cupyserve.runtime.engine_args import EngineArgs

    fields = dict(model=str(_model_path()), device="cuda", max_num_seqs=8, max_model_len=512,
                  kv_cache_memory=32 << 20, pull_if_missing=False)
    fields.update(overrides)
    return LLMEngine(EngineArgs(**fields))


def test_weights_and_kv_are_resident_and_counted(cuda_ops):
    import gc

    import cupy

    gc.collect()  # engines of earlier test modules may still hold device memory in this process
    used_before = cupy.get_default_memory_pool().used_bytes()
    engine = _engine()
    health = engine.health()
    assert health["resident"] is True
    file_bytes = sum(info.num_bytes for info in engine.gguf.tensors.values())
    kv_bytes = engine.kv_cache.num_bytes
    graph_bytes = engine.decode_graphs.num_bytes()
    used = health["vram_bytes_used"]
    assert used >= file_bytes + kv_bytes + graph_bytes
    # Issue #4: within 10% of the file plus the KV pool plus a bounded scratch (this engine's share
    # of the process-wide pool; the graphs' private pool is the scratch of the decode steps).
    this_engine = used - used_before - graph_bytes
    assert this_engine <= 1.10 * (file_bytes + kv_bytes) + (64 << 20), (this_engine, file_bytes, kv_bytes)


def test_residency_check_sees_managed_memory(cuda_ops):
    import cupy

    managed = cupy.ndarray((1024,), dtype=cupy.float32, memptr=cupy.cuda.malloc_managed(4096))
    assert cuda_ops.memory_kind(managed) == "managed"
    assert cuda_ops.memory_kind(cupy.zeros(16)) == "device"


def test_a_cap_below_the_weights_fails_before_loading_with_required_and_available(cuda_ops):
    from cupyserve.runtime.device_memory import InsufficientDeviceMemory

    with pytest.raises(InsufficientDeviceMemory) as info:
        _engine(gpu_memory_limit=16 << 20)
    assert "bytes required" in str(info.value) and "available" in str(info.value)


def test_serve_exits_1_when_the_model_does_not_fit(cuda_ops):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "cupyserve.server", "serve", "--model", str(_model_path()), "--device",
         "cuda", "--gpu-memory-limit", "16MiB", "--no-pull", "--port", "0"],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "not enough GPU memory" in proc.stderr and "bytes required" in proc.stderr
