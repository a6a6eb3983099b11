"""Imports go one way: server -> runtime -> kernels (DESIGN.md). Checked on the AST of every file.

- server/ may import cupyserve.runtime, never cupyserve.kernels or cupy.
- runtime/ may import cupyserve.kernels, never cupyserve.server.
- kernels/ imports neither cupyserve.runtime nor cupyserve.server.
Relative imports are resolved against the file's package, so `from ..kernels import x` counts.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "server": ("cupyserve.kernels", "cupy", "kernels"),
    "runtime": ("cupyserve.server", "server"),
    "kernels": ("cupyserve.runtime", "cupyserve.server", "runtime", "server"),
}


def _package_of(path: Path) -> list[str]:
    """The dotted package a file lives in, as installed (server/x/y.py -> cupyserve.server.x)."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ["cupyserve", *parts[:-1]]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(path)[: len(_package_of(path)) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # `from .. import kernels` names modules directly
                    found.extend((node.lineno, f"{module}.{a.name}") for a in node.names)
                    continue
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


def _violates(module: str, forbidden: tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f + ".") for f in forbidden)


def _files(top: str) -> list[Path]:
    return sorted((REPO / top).rglob("*.py"))


@pytest.mark.parametrize("top", sorted(FORBIDDEN))
def test_imports_go_one_way(top):
    violations = [f"{path.relative_to(REPO)}:{line} imports {module}"
                  for path in _files(top) for line, module in imported_modules(path)
                  if _violates(module, FORBIDDEN[top])]
    assert not violations, "\n".join(violations)


def test_the_checker_sees_relative_and_absolute_imports():
    server_file = REPO / "server" / "app.py"
    modules = [m for _, m in imported_modules(server_file)]
    assert "cupyserve.server.errors" in modules  # `from .errors import ...`
    assert any(m.startswith("cupyserve.runtime") for m in modules)
    assert _violates("cupyserve.kernels.cuda", FORBIDDEN["server"])
    assert _violates("cupy", FORBIDDEN["server"]) and not _violates("cupyserve.runtime", FORBIDDEN["server"])
