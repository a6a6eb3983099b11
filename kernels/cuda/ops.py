"""The CUDA op set: CuPy + the kernels of this folder behind the backend-neutral op API.

Same attributes as `kernels.cpu_ops.CpuOps` (the model code cannot tell them apart): array
module `xp`, weight loading (weights stay in their GGUF block format on the device), the model
ops, and memory management with CuPy's OOM error. Contracts and shapes are the NumPy
reference's (kernels/reference/*.py); numerics are documented in docs/cuda.md.
"""
from __future__ import annotations

import cupy
import cupyx
import numpy as np

from ..fault_injection import FaultInjection
from . import activation, attention, linear as linear_ops, moe, norm, rope, sampling, weights
from .graphs import GraphPool


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
    rope_write_kv = staticmethod(rope.rope_write_kv)
    swiglu = staticmethod(activation.swiglu)
    geglu = staticmethod(activation.geglu)
    gelu = staticmethod(activation.gelu)
    write_kv = staticmethod(attention.write_kv)
    paged_attention = staticmethod(attention.paged_attention)
    load_weight = staticmethod(weights.load_weight)
    can_fuse = staticmethod(weights.can_fuse)
    linear = staticmethod(linear_ops.linear)
    embedding = staticmethod(linear_ops.embedding)
    load_experts = staticmethod(moe.load_experts)
    moe_ffn = staticmethod(moe.moe_ffn)
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

    # ---- CUDA graphs (runtime/decode_graphs.py) ------------------------------------------

    supports_graphs = True

    def graph_pool(self) -> GraphPool:
        return GraphPool()

    def pinned_zeros(self, shape, dtype) -> np.ndarray:
        """A zeroed host array in page-locked memory: copies from it are truly asynchronous."""
        return cupyx.zeros_pinned(shape, dtype=dtype)

    def synchronize(self) -> None:
        cupy.cuda.get_current_stream().synchronize()

    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory; blocks cached by CuPy's pool count as free."""
        free, total = cupy.cuda.runtime.memGetInfo()
        pool = cupy.get_default_memory_pool()
        return free + pool.free_bytes(), total

    _MEMORY_KINDS = {0: "unregistered", 1: "host", 2: "device", 3: "managed"}

    def memory_kind(self, array: cupy.ndarray) -> str:
        """What the driver says `array`'s memory is: device, managed, host or unregistered."""
        attributes = cupy.cuda.runtime.pointerGetAttributes(array.data.ptr)
        return self._MEMORY_KINDS.get(attributes.type, f"type {attributes.type}")

    def bytes_in_use(self) -> int:
        """Device bytes held by this process's arrays (CuPy's default pool, graphs excluded)."""
        return cupy.get_default_memory_pool().used_bytes()

    def set_memory_limit(self, num_bytes: int) -> None:
        """Cap CuPy's default pool: an allocation past it raises OutOfMemoryError."""
        cupy.get_default_memory_pool().set_limit(size=num_bytes)

    def release_cached_memory(self) -> None:
        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()
