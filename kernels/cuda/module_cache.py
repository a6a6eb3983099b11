"""Compiling the `.cu` files of this folder with NVRTC (cupy.RawModule), once per process.

A kernel is named by its file and a C++ name expression (`"gemv_int8<3, 1>"`): each pair is
compiled once per device and cached. `#include "x.cuh"` lines are inlined here, so CuPy's own
disk cache (keyed on the source text) also sees edits to the headers. Compile errors raise
`cupy.cuda.compiler.CompileException` with the NVRTC log: there is no fallback.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path

import cupy

CUDA_DIR = Path(__file__).resolve().parent
_INCLUDE = re.compile(r'^#include "([^"]+)"\s*$', re.MULTILINE)
# -std=c++17 for `if constexpr`-free but template-heavy code; no fast-math: the kernels are
# written to reproduce the NumPy reference's float32 rounding (IEEE division and sqrt).
COMPILE_OPTIONS = ("-std=c++17",)

_lock = threading.Lock()
_functions: dict[tuple[int, str, str], cupy.RawKernel] = {}


def load_source(file_name: str) -> str:
    """The file's text with its local includes inlined (each header once)."""
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        text = (CUDA_DIR / name).read_text()
        text = text.replace("#pragma once", "")
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(file_name)


def get_function(file_name: str, name_expression: str) -> cupy.RawKernel:
    """The compiled kernel `name_expression` of `file_name` for the current device."""
    key = (cupy.cuda.Device().id, file_name, name_expression)
    function = _functions.get(key)
    if function is None:
        with _lock:
            function = _functions.get(key)
            if function is None:
                module = cupy.RawModule(code=load_source(file_name), options=COMPILE_OPTIONS,
                                        name_expressions=[name_expression])
                function = module.get_function(name_expression)
                _functions[key] = function
    return function


def launch(file_name: str, name_expression: str, grid, block, args, shared_mem: int = 0) -> None:
    """Launch on the current stream. Scalars must already be numpy-typed (np.int32, np.int64,
    np.float32, ...) to match the kernel's parameter types exactly."""
    get_function(file_name, name_expression)(grid, block, args, shared_mem=shared_mem)


def blocks_for(num_items: int, threads: int) -> int:
    return max(1, -(-num_items // threads))
