"""GGUF key/value metadata as plain Python values (str, int, float, bool, lists of those)."""
from __future__ import annotations

import os
from typing import Any

from gguf import GGUFReader, GGUFValueType

from .gguf_loader import GGUFFile


def field_value(field: Any) -> Any:
    """Decode one `gguf.ReaderField` into a Python value without copying large arrays twice."""
    types = field.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        item_type = types[-1]
        if item_type == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="surrogateescape")
    value = field.parts[field.data[0]].tolist()[0]
    if types[0] == GGUFValueType.BOOL:
        return bool(value)
    return value


def metadata_from_reader(reader: GGUFReader) -> dict[str, Any]:
    """Metadata of an already-open `gguf.GGUFReader` (slow to open; kept for callers that have
    one, and as the cross-check for our own parser)."""
    return {name: field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """All metadata of a GGUF file, parsed by our fast header reader (`runtime.gguf_loader`).
    Raises `GGUFError` (a ValueError) naming the file on a corrupt or unsupported file."""
    return GGUFFile.open(path).metadata
