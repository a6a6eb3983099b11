"""GGUF key/value metadata as plain Python values (str, int, float, bool, lists of those)."""
from __future__ import annotations

from typing import Any

from gguf import GGUFReader, GGUFValueType


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
    return {name: field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}


def read_metadata(path: str) -> dict[str, Any]:
    """All metadata of a GGUF file. Raises whatever `gguf` raises on a corrupt file; the loader
    (`runtime.gguf_loader`) wraps this with validation and clear messages."""
    return metadata_from_reader(GGUFReader(path, "r"))
