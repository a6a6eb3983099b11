"""GPU kernel tests: every CUDA op against its NumPy reference. Skipped cleanly without CuPy or a
GPU (CI has none); run on a GPU machine with `pytest -m gpu tests/kernels`.

Every array the CUDA launchers allocate with cupy.empty / empty_like is poisoned (NaN, or 0x7f
bytes for integers) so an output element a kernel forgets to write fails the comparison.
"""
from __future__ import annotations

import pytest

from testdata import require_gpu


@pytest.fixture(scope="session")
def cuda_ops():
    require_gpu()
    from cupyserve.kernels import get_ops

    return get_ops("cuda")


@pytest.fixture(autouse=True)
def poison_device_allocations(request, monkeypatch):
    if request.node.get_closest_marker("gpu") is None:
        yield
        return
    cupy = require_gpu()
    import numpy as np

    real_empty, real_empty_like = cupy.empty, cupy.empty_like

    def poison(array):
        if array.dtype.kind == "f":
            array.fill(np.nan)
        else:
            array.view(np.uint8).fill(0x7F)
        return array

    monkeypatch.setattr(cupy, "empty", lambda *a, **k: poison(real_empty(*a, **k)))
    monkeypatch.setattr(cupy, "empty_like", lambda *a, **k: poison(real_empty_like(*a, **k)))
    yield


@pytest.fixture
def launches(monkeypatch):
    """Our kernels launched (by name, template arguments dropped) while the test runs."""
    import collections

    from cupyserve.kernels.cuda import module_cache

    counts: collections.Counter = collections.Counter()
    real_get_function = module_cache.get_function

    def counting_get_function(file_name, name_expression):
        counts[name_expression.split("<")[0]] += 1
        return real_get_function(file_name, name_expression)

    monkeypatch.setattr(module_cache, "get_function", counting_get_function)
    return counts
