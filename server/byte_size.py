"""Byte sizes as people write them on a command line: 512MiB, 2GB, 1.5GiB, 1048576."""
from __future__ import annotations

import re

# Decimal SI units (KB = 1000) and binary IEC units (KiB = 1024); a bare K/M/G/T is binary,
# as in most tools that size memory.
_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_byte_size(text: str) -> int:
    """Bytes for `text`; ValueError naming the accepted units on anything else."""
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a byte size: {text!r} (use e.g. 536870912, 512MiB, 2GB, 1.5GiB)")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"byte size must be positive: {text!r}")
    return size
