"""Device code: one op API, two implementations (NumPy reference on CPU, CuPy on NVIDIA GPUs)."""
from __future__ import annotations


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    try:
        import cupy  # noqa: F401

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDARuntimeError without a driver, ...
        return False


def get_ops(device: str):
    """The op set for `device` ("cpu" or "cuda"). Asking for cuda without a GPU is an error."""
    if device == "cpu":
        from .cpu_ops import CpuOps

        return CpuOps()
    if device == "cuda":
        if not cuda_available():
            raise RuntimeError("device 'cuda' requested but CuPy found no usable NVIDIA GPU")
        from .cuda.ops import CudaOps

        return CudaOps()
    raise ValueError(f"unknown device {device!r} (cpu, cuda)")
