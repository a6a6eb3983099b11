"""A validated, memory-mapped GGUF file: metadata, tensor directory and zero-copy tensor views.

`GGUFFile.open(path)` checks everything that can be checked without knowing the model family:
magic, version (2 or 3), the header and metadata being complete, `general.alignment`, every
tensor's type (only the quantizations the kernels implement), its row size against the quant
block, its data offset being aligned and its bytes lying inside the file. Family code then calls
`validate_tensors` with the names and shapes it expects. Every failure is a `GGUFError` whose
message names the file and the tensor.
"""
from __future__ import annotations

import math
import mmap
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

from .gguf_header import GGUFError, HeaderCursor, read_key_values

# The quantizations the kernels implement (DESIGN.md); anything else is refused at open.
from ..kernels.reference.dequant import SUPPORTED_TYPES

__all__ = ["GGUFError", "GGUFFile", "TensorInfo", "SUPPORTED_TYPES", "SUPPORTED_VERSIONS"]

SUPPORTED_VERSIONS = (2, 3)


# ggml tensors have at most 4 dimensions; more means a corrupt tensor directory.
MAX_DIMS = 4

# Element types `GGUFFile.array` can view directly. BF16 has no numpy dtype: raw uint16 bits.
_ARRAY_DTYPES = {
    GGMLQuantizationType.F32: np.dtype("<f4"),
    GGMLQuantizationType.F16: np.dtype("<f2"),
    GGMLQuantizationType.BF16: np.dtype("<u2"),
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's directory entry.

    `shape` is numpy order, outermost first (a weight matrix is (out_features, in_features)):
    the reverse of GGUF's ne[]. `offset` is absolute in the file; `num_bytes` is the exact size
    of its data.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    offset: int
    num_bytes: int

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("TensorInfo.name must not be empty")
        if any(d < 0 for d in self.shape):
            raise ValueError(f"TensorInfo {self.name}: negative dimension in {self.shape}")
        if self.offset < 0 or self.num_bytes < 0:
            raise ValueError(f"TensorInfo {self.name}: negative offset or size")

    @property
    def block_size(self) -> int:
        """Elements per quant block (1 for float types)."""
        return GGML_QUANT_SIZES[self.ggml_type][0]

    @property
    def row_bytes(self) -> int:
        """Bytes of one row (the innermost dimension)."""
        block_size, type_size = GGML_QUANT_SIZES[self.ggml_type]
        inner = self.shape[-1] if self.shape else 1
        return inner // block_size * type_size

    @property
    def num_rows(self) -> int:
        """Product of all dimensions but the innermost one."""
        return math.prod(self.shape[:-1]) if self.shape else 1

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GGUFFile:
    """An open GGUF file. Build it with `GGUFFile.open`; the mapping lives as long as the object
    and any array view taken from it."""

    path: Path
    version: int
    alignment: int
    metadata: dict[str, Any] = field(repr=False)
    tensors: dict[str, TensorInfo] = field(repr=False)
    file_size: int
    data_offset: int
    _bytes: np.ndarray = field(repr=False, compare=False)

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise GGUFError(f"{self.path}: metadata has no 'general.architecture' string")
        return arch

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> GGUFFile:
        path = Path(path)
        try:
            file_size = path.stat().st_size
            if file_size == 0:
                raise GGUFError(f"{path}: file is empty, not a GGUF file")
            with open(path, "rb") as handle:
                # The mapping outlives the handle; ACCESS_READ makes every view read-only.
                buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise GGUFError(f"{path}: cannot open: {exc.strerror or exc}") from exc
        return _parse(path, buffer, file_size)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: no tensor {name!r}") from None

    def raw(self, name: str) -> np.ndarray:
        """Zero-copy read-only uint8 view of a tensor's bytes, shaped [num_rows, row_bytes]."""
        info = self.info(name)
        view = self._bytes[info.offset : info.offset + info.num_bytes]
        return view.reshape(info.num_rows, info.row_bytes)

    def array(self, name: str) -> np.ndarray:
        """Zero-copy typed view in `shape` for F32, F16 and BF16 (as uint16 bits)."""
        info = self.info(name)
        dtype = _ARRAY_DTYPES.get(info.ggml_type)
        if dtype is None:
            raise GGUFError(
                f"{self.path}: tensor {name!r} is {info.ggml_type.name}, not a float type; "
                "use raw() and dequantize"
            )
        view = self._bytes[info.offset : info.offset + info.num_bytes]
        return view.view(dtype).reshape(info.shape)

    def validate_tensors(
        self, expected: Mapping[str, tuple[int, ...]], optional: Collection[str] = ()
    ) -> None:
        """Checks that every name in `expected` exists with exactly that (numpy-order) shape.
        Names in `optional` may be absent but, when present, must have the expected shape.
        Raises one `GGUFError` listing every problem."""
        problems = []
        optional = set(optional)
        for name, want in expected.items():
            info = self.tensors.get(name)
            if info is None:
                if name not in optional:
                    problems.append(f"missing tensor {name!r}")
                continue
            if tuple(info.shape) != tuple(want):
                problems.append(
                    f"tensor {name!r} has shape {tuple(info.shape)}, expected {tuple(want)}"
                )
        if problems:
            arch = self.metadata.get("general.architecture", "?")
            raise GGUFError(f"{self.path} (architecture {arch!r}): " + "; ".join(problems))


def _parse(path: Path, buffer: mmap.mmap, file_size: int) -> GGUFFile:
    cursor = HeaderCursor(buffer, file_size, str(path))
    cursor.context = "header"
    magic = cursor.u32()
    if magic != GGUF_MAGIC:
        raise cursor.fail(
            f"not a GGUF file (magic {buffer[0:4]!r}, expected b'GGUF')"
        )
    version = cursor.u32()
    if version not in SUPPORTED_VERSIONS:
        # A big-endian file reads as a huge version number; say so rather than guess.
        raise cursor.fail(
            f"unsupported GGUF version {version} (supported: 2, 3; big-endian files are not supported)"
        )
    num_tensors = cursor.u64()
    num_kv = cursor.u64()
    metadata, value_types = read_key_values(cursor, num_kv)
    alignment = _alignment(cursor, metadata, value_types)

    entries = []
    seen: set[str] = set()
    for index in range(num_tensors):
        cursor.context = f"tensor directory entry {index}"
        name = cursor.string()
        cursor.context = f"tensor directory entry of {name!r}"
        if name in seen:
            raise cursor.fail(f"duplicate tensor name {name!r}")
        seen.add(name)
        num_dims = cursor.u32()
        if num_dims > MAX_DIMS:
            raise cursor.fail(f"tensor {name!r} has {num_dims} dimensions (at most {MAX_DIMS})")
        ne = [cursor.u64() for _ in range(num_dims)]
        raw_type = cursor.u32()
        relative_offset = cursor.u64()
        entries.append((name, ne, raw_type, relative_offset))

    data_offset = _align_up(cursor.pos, alignment)
    tensors: dict[str, TensorInfo] = {}
    for name, ne, raw_type, relative_offset in entries:
        tensors[name] = _tensor_info(
            cursor, name, ne, raw_type, relative_offset, data_offset, alignment, file_size
        )
    return GGUFFile(
        path=path,
        version=version,
        alignment=alignment,
        metadata=metadata,
        tensors=tensors,
        file_size=file_size,
        data_offset=data_offset,
        _bytes=np.frombuffer(buffer, dtype=np.uint8),
    )


def _alignment(
    cursor: HeaderCursor, metadata: dict[str, Any], value_types: dict[str, GGUFValueType]
) -> int:
    key = "general.alignment"
    if key not in metadata:
        return GGUF_DEFAULT_ALIGNMENT
    value = metadata[key]
    if value_types[key] != GGUFValueType.UINT32:
        raise cursor.fail(f"{key!r} must be a uint32, got {value_types[key].name} {value!r}")
    # Padding math assumes a power of two, as ggml does.
    if value <= 0 or value & (value - 1):
        raise cursor.fail(f"{key!r} is {value}, must be a power of two")
    return value


def _tensor_info(
    cursor: HeaderCursor,
    name: str,
    ne: list[int],
    raw_type: int,
    relative_offset: int,
    data_offset: int,
    alignment: int,
    file_size: int,
) -> TensorInfo:
    try:
        ggml_type = GGMLQuantizationType(raw_type)
    except ValueError:
        raise cursor.fail(f"tensor {name!r} has unknown ggml type {raw_type}") from None
    if ggml_type not in SUPPORTED_TYPES:
        supported = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
        raise cursor.fail(
            f"tensor {name!r} has unsupported type {ggml_type.name} (supported: {supported})"
        )
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    inner = ne[0] if ne else 1
    if inner % block_size:
        raise cursor.fail(
            f"tensor {name!r}: innermost dimension {inner} is not a multiple of the "
            f"{ggml_type.name} block size {block_size}"
        )
    if relative_offset % alignment:
        raise cursor.fail(
            f"tensor {name!r}: data offset {relative_offset} is not a multiple of the "
            f"alignment {alignment}"
        )
    num_bytes = math.prod(ne[1:]) * (inner // block_size) * type_size
    offset = data_offset + relative_offset
    if offset + num_bytes > file_size:
        raise cursor.fail(
            f"tensor {name!r}: data [{offset}, {offset + num_bytes}) extends past the end of the "
            f"file ({file_size} bytes); the file is truncated"
        )
    return TensorInfo(
        name=name,
        shape=tuple(reversed(ne)),
        ggml_type=ggml_type,
        offset=offset,
        num_bytes=num_bytes,
    )


def _align_up(position: int, alignment: int) -> int:
    return (position + alignment - 1) // alignment * alignment
