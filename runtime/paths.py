"""Where cupyserve finds its packaged configs and keeps its model cache."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def configs_dir() -> Path:
    """The installed `configs/` folder (data only; a namespace package so it needs no code)."""
    spec = importlib.util.find_spec("cupyserve.configs")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("cupyserve.configs is not installed; reinstall cupyserve")
    for location in spec.submodule_search_locations:
        if Path(location).is_dir():
            return Path(location)
    raise RuntimeError("cupyserve.configs has no folder on disk")


def cache_dir() -> Path:
    """Model cache: $CUPYSERVE_CACHE_DIR, else ~/.cache/cupyserve/models."""
    override = os.environ.get("CUPYSERVE_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "cupyserve" / "models"
