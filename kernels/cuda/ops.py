"""The CUDA op set: CuPy + the kernels of this folder behind the backend-neutral op API.

Same attributes as `kernels.cpu_ops.CpuOps` (the model code cannot tell them apart): array
module `xp`, weight loading (weights stay in their GGUF block format on the device), the model
ops, and memory management with CuPy's OOM error. Contracts and shapes are the NumPy
reference's (kernels/reference/*.py); numerics are documented in docs/cuda.md.
"""
from __future__ import annotations

import cupy
import numpy as np

from ..fault_injection import FaultInjection
from . import activation, attention, linear as linear_ops, norm, rope, sampling, weights


class InjectedOutOfMemory(cupy.cuda.memory.OutOfMemoryError):
    """Fault injection's OOM: a real `cupy.cuda.memory.OutOfMemoryError` with its own message."""

    def __init__(self, message: str) -> None:  # noqa: D107 - cupy's needs (size, total)
        MemoryError.__init__(self, message)


class CudaOps(FaultInjection):
    name = "cuda"
    xp = cupy
    OutOfMemoryError: type[BaseException] = cupy.cuda.memory.OutOfMemoryError
    injected_oom_error = InjectedOutOfMemory

    # Model ops (signatures and shapes documented on the launchers and the reference functions).
    rms_norm = staticmethod(norm.rms_norm)
    add_rms_norm = staticmethod(norm.add_rms_norm)
    head_rms_norm = staticmethod(norm.head_rms_norm)
    layer_norm = staticmethod(norm.layer_norm)
    add_layer_norm = staticmethod(norm.add_layer_norm)
    rope_cos_sin = staticmethod(rope.rope_cos_sin)
    apply_rope = staticmethod(rope.apply_rope)
    swiglu = staticmethod(activation.swiglu)
    geglu = staticmethod(activation.geglu)
    gelu = staticmethod(activation.gelu)
    write_kv = staticmethod(attention.write_kv)
    paged_attention = staticmethod(attention.paged_attention)
    load_weight = staticmethod(weights.load_weight)
    can_fuse = staticmethod(weights.can_fuse)
    linear = staticmethod(linear_ops.linear)
    embedding = staticmethod(linear_ops.embedding)
    # Token sampling on the device (kernels/cuda/sampling.py; the twin of reference/sampling.py).
    sampling = sampling

    def asarray(self, host_array: np.ndarray, dtype=None) -> cupy.ndarray:
        """Resident data (weights): a device copy of a host array."""
        return cupy.asarray(np.asarray(host_array, dtype=dtype))

    def upload(self, host_array: np.ndarray) -> cupy.ndarray:
        """Step-scoped input: counted by fault injection like any step allocation."""
        self.check_alloc()
        return cupy.asarray(host_array)

    def to_host(self, array) -> np.ndarray:
        return cupy.asnumpy(array)

    def empty(self, shape, dtype) -> cupy.ndarray:
        self.check_alloc()
        return cupy.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype) -> cupy.ndarray:
        self.check_alloc()
        return cupy.zeros(shape, dtype=dtype)

    def synchronize(self) -> None:
        cupy.cuda.get_current_stream().synchronize()

    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory; blocks cached by CuPy's pool count as free."""
        free, total = cupy.cuda.runtime.memGetInfo()
        pool = cupy.get_default_memory_pool()
        return free + pool.free_bytes(), total

    def release_cached_memory(self) -> None:
        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()
