"""Byte-level reading of a GGUF header: a bounds-checked cursor over the mapped file and the
decoding of key/value metadata into plain Python values.

Why not `gguf.GGUFReader`: it builds a numpy object per array element, so opening a file with a
262k-token vocabulary takes seconds. Here string arrays are decoded in one tight loop and numeric
arrays with one `np.frombuffer`, which is what makes `GGUFFile.open` fast. Constants (value
types) still come from the `gguf` package so the format definition has one source.
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np
from gguf import GGUFValueType


class GGUFError(ValueError):
    """A GGUF file that cannot be used; the message names the file and, where relevant, the
    tensor or metadata key."""


# Fixed-size scalar types: struct format (little endian) and the numpy dtype for arrays of them.
_SCALAR_FORMATS: dict[GGUFValueType, tuple[str, np.dtype]] = {
    GGUFValueType.UINT8: ("<B", np.dtype("<u1")),
    GGUFValueType.INT8: ("<b", np.dtype("<i1")),
    GGUFValueType.UINT16: ("<H", np.dtype("<u2")),
    GGUFValueType.INT16: ("<h", np.dtype("<i2")),
    GGUFValueType.UINT32: ("<I", np.dtype("<u4")),
    GGUFValueType.INT32: ("<i", np.dtype("<i4")),
    GGUFValueType.FLOAT32: ("<f", np.dtype("<f4")),
    GGUFValueType.BOOL: ("<?", np.dtype("<u1")),
    GGUFValueType.UINT64: ("<Q", np.dtype("<u8")),
    GGUFValueType.INT64: ("<q", np.dtype("<i8")),
    GGUFValueType.FLOAT64: ("<d", np.dtype("<f8")),
}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class HeaderCursor:
    """Reads little-endian GGUF primitives from `buffer` (an `mmap`), advancing `pos`.

    Every read checks the end of the buffer first and raises `GGUFError` naming the file and
    `context` (what was being read), so a truncated file never yields garbage or an IndexError.
    """

    def __init__(self, buffer: Any, size: int, path: str) -> None:
        self.buffer = buffer
        self.size = size
        self.path = path
        self.pos = 0
        self.context = "header"

    def fail(self, message: str) -> GGUFError:
        return GGUFError(f"{self.path}: {message}")

    def _need(self, num_bytes: int) -> None:
        if num_bytes < 0 or self.pos + num_bytes > self.size:
            raise self.fail(
                f"truncated or corrupt {self.context}: needs {num_bytes} bytes at offset "
                f"{self.pos}, file has {self.size}"
            )

    def u32(self) -> int:
        self._need(4)
        (value,) = _U32.unpack_from(self.buffer, self.pos)
        self.pos += 4
        return value

    def u64(self) -> int:
        self._need(8)
        (value,) = _U64.unpack_from(self.buffer, self.pos)
        self.pos += 8
        return value

    def string(self) -> str:
        length = self.u64()
        self._need(length)
        start = self.pos
        self.pos += length
        # surrogateescape: vocab entries may be invalid UTF-8 fragments; keep their bytes.
        return self.buffer[start : self.pos].decode("utf-8", errors="surrogateescape")

    def value_type(self) -> GGUFValueType:
        raw = self.u32()
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.fail(f"unknown metadata value type {raw} in {self.context}") from None

    def value(self, value_type: GGUFValueType) -> Any:
        """One metadata value of `value_type` as a plain Python value."""
        if value_type == GGUFValueType.STRING:
            return self.string()
        if value_type == GGUFValueType.ARRAY:
            item_type = self.value_type()
            count = self.u64()
            return self.array(item_type, count)
        fmt, dtype = _SCALAR_FORMATS[value_type]
        self._need(dtype.itemsize)
        (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += dtype.itemsize
        if value_type == GGUFValueType.FLOAT32:
            return float(value)
        return value

    def array(self, item_type: GGUFValueType, count: int) -> list[Any]:
        if item_type == GGUFValueType.STRING:
            return self._string_array(count)
        if item_type == GGUFValueType.ARRAY:
            # Arrays of arrays are legal but rare; decode them one element at a time.
            result = []
            for _ in range(count):
                inner_type = self.value_type()
                result.append(self.array(inner_type, self.u64()))
            return result
        _, dtype = _SCALAR_FORMATS[item_type]
        self._need(count * dtype.itemsize)
        values = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.pos)
        self.pos += count * dtype.itemsize
        if item_type == GGUFValueType.BOOL:
            return (values != 0).tolist()
        return values.tolist()

    def _string_array(self, count: int) -> list[str]:
        # Each string needs at least its 8-byte length: reject absurd counts before looping.
        self._need(count * 8)
        buffer, size, pos = self.buffer, self.size, self.pos
        unpack_u64 = _U64.unpack_from
        result = []
        append = result.append
        for _ in range(count):
            if pos + 8 > size:
                self.pos = pos
                self._need(8)
            (length,) = unpack_u64(buffer, pos)
            pos += 8
            end = pos + length
            if end > size:
                self.pos = pos
                self._need(length)
            append(buffer[pos:end].decode("utf-8", errors="surrogateescape"))
            pos = end
        self.pos = pos
        return result


def read_key_values(
    cursor: HeaderCursor, num_kv: int
) -> tuple[dict[str, Any], dict[str, GGUFValueType]]:
    """Reads `num_kv` metadata entries at the cursor: (values, value type of each key).
    Duplicate keys are an error: which of the two values a reader would use is undefined."""
    metadata: dict[str, Any] = {}
    value_types: dict[str, GGUFValueType] = {}
    for index in range(num_kv):
        cursor.context = f"metadata entry {index}"
        key = cursor.string()
        cursor.context = f"metadata value of {key!r}"
        value_type = cursor.value_type()
        value = cursor.value(value_type)
        if key in metadata:
            raise cursor.fail(f"duplicate metadata key {key!r}")
        metadata[key] = value
        value_types[key] = value_type
    return metadata, value_types
