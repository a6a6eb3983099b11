"""The CPU op set: the NumPy reference kernels behind the backend-neutral op API.

Every backend exposes the same attributes (see `kernels.get_ops`): array module `xp`, weight
loading, the model ops, sampling helpers, and memory management with the backend's OOM error.
"""
from __future__ import annotations

import numpy as np

from .fault_injection import FaultInjection
from .reference import activation, attention, moe, norm, rope, sampling
from .reference import linear as linear_ops


class DeviceOutOfMemory(MemoryError):
    """The backend could not allocate device memory (on CPU: only raised by fault injection)."""


class CpuOps(FaultInjection):
    name = "cpu"
    xp = np
    OutOfMemoryError: type[BaseException] = DeviceOutOfMemory
    injected_oom_error = DeviceOutOfMemory

    # Model ops (signatures and shapes documented on the reference functions).
    head_rms_norm = staticmethod(norm.head_rms_norm)
    layer_norm = staticmethod(norm.layer_norm)
    add_layer_norm = staticmethod(norm.add_layer_norm)
    rope_cos_sin = staticmethod(rope.rope_cos_sin)
    apply_rope = staticmethod(rope.apply_rope)
    rope_write_kv = staticmethod(rope.rope_write_kv)
    gelu = staticmethod(activation.gelu_tanh)
    write_kv = staticmethod(attention.write_kv)
    paged_attention = staticmethod(attention.paged_attention)
    load_weight = staticmethod(linear_ops.load_weight)
    can_fuse = staticmethod(linear_ops.can_fuse)
    linear = staticmethod(linear_ops.linear)
    embedding = staticmethod(linear_ops.embedding)
    load_experts = staticmethod(moe.load_experts)
    moe_ffn = staticmethod(moe.moe_ffn)
    # Token sampling (kernels/reference/sampling.py; the CUDA twin is kernels/cuda/sampling.py).
    sampling = sampling

    # `quantize_for` (the weight the result feeds): the CUDA ops then also emit the activations'
    # q8_32 codes for the decode GEMV; the reference rounds inside `linear`, so it changes nothing.
    @staticmethod
    def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, quantize_for=None) -> np.ndarray:
        return norm.rms_norm(x, weight, eps)

    @staticmethod
    def add_rms_norm(x: np.ndarray, residual: np.ndarray, weight: np.ndarray, eps: float,
                     quantize_for=None) -> tuple[np.ndarray, np.ndarray]:
        return norm.add_rms_norm(x, residual, weight, eps)

    @staticmethod
    def swiglu(gate_up: np.ndarray, quantize_for=None) -> np.ndarray:
        return activation.swiglu(gate_up)

    @staticmethod
    def geglu(gate_up: np.ndarray, quantize_for=None) -> np.ndarray:
        return activation.geglu(gate_up)

    supports_graphs = False  # CUDA graphs: runtime/decode_graphs.py is CUDA-only

    def asarray(self, host_array: np.ndarray, dtype=None) -> np.ndarray:
        """Resident data (weights): a device copy of a host array."""
        return np.asarray(host_array, dtype=dtype)

    def upload(self, host_array: np.ndarray) -> np.ndarray:
        """Step-scoped input: counted by fault injection like any step allocation."""
        self.check_alloc()
        return host_array

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array)

    def empty(self, shape, dtype) -> np.ndarray:
        self.check_alloc()
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype) -> np.ndarray:
        self.check_alloc()
        return np.zeros(shape, dtype=dtype)

    def synchronize(self) -> None:
        return None

    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of the memory the backend allocates from."""
        try:
            with open("/proc/meminfo") as f:
                info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
            return info.get("MemAvailable", 0), info.get("MemTotal", 0)
        except OSError:
            return 0, 0

    def release_cached_memory(self) -> None:
        return None
