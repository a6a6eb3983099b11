"""Where the reference data of the tests lives (imported by tests; tests/conftest.py puts this
folder on sys.path so the import works from every test folder)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """`../shared` beside the checkout (CI lays it there too), or $CUPYSERVE_SHARED_DIR."""
    override = os.environ.get("CUPYSERVE_SHARED_DIR")
    path = Path(override) if override else REPO_ROOT.parent / "shared"
    if not (path / "goldens").is_dir():
        raise RuntimeError(f"reference data not found at {path}; set CUPYSERVE_SHARED_DIR")
    return path


def backend_under_test() -> str:
    """Backend of the golden and end-to-end tests: $CUPYSERVE_TEST_DEVICE (cpu, the default, or
    cuda on the GPU machine, where the same tests then check the CUDA backend)."""
    device = os.environ.get("CUPYSERVE_TEST_DEVICE", "cpu")
    if device not in ("cpu", "cuda"):
        raise RuntimeError(f"CUPYSERVE_TEST_DEVICE must be cpu or cuda, got {device!r}")
    return device


def require_gpu():
    """The `cupy` module when CuPy imports and sees a GPU; otherwise skip the calling test (CI has
    no GPU, so GPU tests must skip cleanly, never fail)."""
    import pytest

    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception as error:  # no driver
        pytest.skip(f"no CUDA device ({error})")
    return cupy
