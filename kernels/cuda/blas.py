"""cuBLAS GEMM through our own handle, called with ctypes so it can be captured in CUDA graphs.

CuPy's cuBLAS wrappers refuse to run while a stream is capturing (its `setStream` raises
NotImplementedError), although cuBLAS itself supports capture when the handle has a workspace
set by the caller (cuBLAS docs, "CUDA Graphs Support"): with one, cuBLAS allocates nothing
during the call. So this module owns one handle per device, sets the caller's stream and a
fixed workspace before every call, and calls `cublasGemmEx` directly. The library is the one
CuPy already loaded (same process, same soname), so no second cuBLAS is involved.
"""
from __future__ import annotations

import ctypes
import threading

import cupy

WORKSPACE_BYTES = 32 << 20  # cuBLAS's recommendation for Hopper is 32 MiB
_SONAMES = ("libcublas.so.13", "libcublas.so.12", "libcublas.so")

CUDA_R_16F = 2
CUDA_R_32F = 0
CUBLAS_COMPUTE_32F = 68
CUBLAS_GEMM_DEFAULT = -1
CUBLAS_OP_N = 0
CUBLAS_OP_T = 1

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_handles: dict[int, tuple[ctypes.c_void_p, cupy.ndarray]] = {}
_ONE = ctypes.c_float(1.0)
_ZERO = ctypes.c_float(0.0)


def _load_library() -> ctypes.CDLL:
    cupy.cuda.device.get_cublas_handle()  # makes CuPy load its cuBLAS into this process first
    errors = []
    for name in _SONAMES:
        try:
            return ctypes.CDLL(name)
        except OSError as error:
            errors.append(str(error))
    with open("/proc/self/maps") as maps:  # CuPy may have loaded it by full path
        for line in maps:
            if "libcublas.so" in line and "libcublasLt" not in line:
                return ctypes.CDLL(line.split()[-1])
    raise OSError("cuBLAS library not found: " + "; ".join(errors))


def _check(status: int, call: str) -> None:
    if status != 0:
        raise RuntimeError(f"{call} failed with cuBLAS status {status}")


def _handle() -> tuple[ctypes.CDLL, ctypes.c_void_p, cupy.ndarray]:
    global _library
    device = cupy.cuda.Device().id
    entry = _handles.get(device)
    if entry is None:
        with _lock:
            if _library is None:
                _library = _load_library()
            entry = _handles.get(device)
            if entry is None:
                handle = ctypes.c_void_p()
                _check(_library.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
                workspace = cupy.empty(WORKSPACE_BYTES, dtype=cupy.uint8)
                entry = _handles[device] = (handle, workspace)
    return _library, entry[0], entry[1]


def gemm_f16_f32(
    transa: int, transb: int, m: int, n: int, k: int,
    a_ptr: int, lda: int,  # A: fp16, column-major m x k after op
    b_ptr: int, ldb: int,  # B: fp16, column-major k x n after op
    c_ptr: int, ldc: int,  # C: fp32, column-major m x n
) -> None:
    """C = op(A) . op(B) with fp32 accumulation (tensor cores), on the current stream."""
    library, handle, workspace = _handle()
    stream = cupy.cuda.get_current_stream().ptr
    _check(library.cublasSetStream_v2(handle, ctypes.c_void_p(stream)), "cublasSetStream")
    # SetStream resets the workspace to cuBLAS's own pool: set ours again after it.
    _check(library.cublasSetWorkspace_v2(handle, ctypes.c_void_p(workspace.data.ptr),
                                         ctypes.c_size_t(WORKSPACE_BYTES)), "cublasSetWorkspace")
    _check(library.cublasGemmEx(
        handle, transa, transb, m, n, k, ctypes.byref(_ONE),
        ctypes.c_void_p(a_ptr), CUDA_R_16F, lda, ctypes.c_void_p(b_ptr), CUDA_R_16F, ldb,
        ctypes.byref(_ZERO), ctypes.c_void_p(c_ptr), CUDA_R_32F, ldc,
        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT), "cublasGemmEx")
