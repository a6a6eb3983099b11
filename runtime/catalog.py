"""The model catalog (`configs/models.yaml`): models that PyPI packages ship as wheels, and how a
model name or a local path becomes a GGUF file on disk."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import paths

__all__ = [
    "CatalogError",
    "CatalogEntry",
    "UnknownModelError",
    "WheelSource",
    "catalog_path",
    "default_model_name",
    "get_entry",
    "load_catalog",
    "resolve_model",
]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# PEP 508 distribution names; we also require a pinned version so the bytes never change.
_PACKAGE_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+!-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class CatalogError(ValueError):
    """`models.yaml` is malformed; the message names the file and the entry."""


class UnknownModelError(ValueError):
    """A model name that is neither in the catalog nor an existing file."""


@dataclass(frozen=True)
class WheelSource:
    """One wheel on PyPI and the archive member inside it that holds (part of) the GGUF."""

    package: str
    version: str
    member: str

    def __post_init__(self) -> None:
        if not _PACKAGE_RE.match(self.package):
            raise ValueError(f"invalid package name {self.package!r}")
        if not _VERSION_RE.match(self.version):
            raise ValueError(f"package {self.package}: invalid pinned version {self.version!r}")
        parts = self.member.split("/")
        if not self.member or self.member.startswith("/") or ".." in parts or "" in parts:
            raise ValueError(f"package {self.package}: member {self.member!r} must be a relative path")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class CatalogEntry:
    """A pullable model: its sources are concatenated in order into `filename`, which must then
    have exactly `size_bytes` bytes and this `sha256`."""

    name: str
    filename: str
    size_bytes: int
    sha256: str
    sources: tuple[WheelSource, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"invalid model name {self.name!r} (lowercase letters, digits, . _ -)")
        if (
            not self.filename.endswith(".gguf")
            or "/" in self.filename
            or "\\" in self.filename
            or self.filename.startswith(".")
        ):
            raise ValueError(f"filename {self.filename!r} must be a plain name ending in .gguf")
        if isinstance(self.size_bytes, bool) or not isinstance(self.size_bytes, int) or self.size_bytes <= 0:
            raise ValueError(f"size_bytes must be a positive integer, got {self.size_bytes!r}")
        if not isinstance(self.sha256, str) or not _SHA256_RE.match(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if not self.sources:
            raise ValueError("sources must list at least one wheel")

    def path_in(self, cache_root: Path) -> Path:
        """Where this model lives in a cache: `<cache_root>/<name>/<filename>`."""
        return Path(cache_root) / self.name / self.filename


def catalog_path() -> Path:
    return paths.configs_dir() / "models.yaml"


def load_catalog(path: str | Path | None = None) -> dict[str, CatalogEntry]:
    """All catalog entries by name, in file order. Raises `CatalogError` on a malformed file."""
    return dict(_load(str(path or catalog_path()))[1])


def default_model_name(path: str | Path | None = None) -> str:
    return _load(str(path or catalog_path()))[0]


def get_entry(name: str, path: str | Path | None = None) -> CatalogEntry:
    catalog = load_catalog(path)
    try:
        return catalog[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; catalog models: {', '.join(catalog)}"
        ) from None


def resolve_model(
    name_or_path: str,
    pull_if_missing: bool = True,
    *,
    cache_dir: str | Path | None = None,
) -> Path:
    """The GGUF file for a catalog name or a path.

    A catalog name wins over a same-named file in the working directory (write `./name` for the
    file). A catalog name gives `<cache>/<name>/<filename>`, pulled (and verified) first if it is
    missing and `pull_if_missing`; an existing file path is returned as given (the loader checks
    its contents). Anything else raises `UnknownModelError` listing the catalog names.
    """
    catalog = load_catalog()
    entry = catalog.get(name_or_path)
    if entry is not None:
        root = Path(cache_dir) if cache_dir is not None else paths.cache_dir()
        final = entry.path_in(root)
        if not pull_if_missing:
            if final.is_file():
                return final
            raise UnknownModelError(
                f"model {name_or_path!r} is not in the cache ({final}); "
                f"run `cupyserve pull {name_or_path}`"
            )
        # Imported here: pull imports this module for the catalog types.
        from .pull import pull_entry

        return pull_entry(entry, cache_dir=root)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    what = "no such file" if ("/" in name_or_path or name_or_path.endswith(".gguf")) else "unknown model"
    raise UnknownModelError(
        f"{what} {name_or_path!r}; pass a .gguf file path or one of the catalog models: "
        f"{', '.join(catalog)}"
    )


@functools.lru_cache(maxsize=8)
def _load(path: str) -> tuple[str, dict[str, CatalogEntry]]:
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"{path}: cannot read model catalog: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("models"), dict):
        raise CatalogError(f"{path}: expected a mapping with a 'models' mapping")
    entries: dict[str, CatalogEntry] = {}
    for name, raw in document["models"].items():
        entries[str(name)] = _entry(path, str(name), raw)
    if not entries:
        raise CatalogError(f"{path}: the catalog has no models")
    default = document.get("default")
    if default not in entries:
        raise CatalogError(f"{path}: default {default!r} is not one of {', '.join(entries)}")
    return default, entries


def _entry(path: str, name: str, raw: object) -> CatalogEntry:
    fields = {"description", "filename", "size_bytes", "sha256", "sources"}
    try:
        if not isinstance(raw, dict):
            raise ValueError("must be a mapping")
        unknown = set(raw) - fields
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        sources = raw.get("sources")
        if not isinstance(sources, list):
            raise ValueError("sources must be a list")
        wheels = []
        for source in sources:
            if not isinstance(source, dict) or set(source) != {"package", "version", "member"}:
                raise ValueError("each source needs exactly package, version, member")
            wheels.append(WheelSource(**{k: str(v) for k, v in source.items()}))
        return CatalogEntry(
            name=name,
            filename=str(raw.get("filename", "")),
            size_bytes=raw.get("size_bytes"),
            sha256=raw.get("sha256"),
            sources=tuple(wheels),
            description=str(raw.get("description", "")),
        )
    except (TypeError, ValueError) as exc:
        raise CatalogError(f"{path}: model {name!r}: {exc}") from exc
