"""A GGUF file's metadata (its key-value header) without loading tensors. Stdlib only, like `files.py`.

The `gguf` package's reader parses every field and array into numpy views up front: ~2.5 s for SmolLM2-135M's
header (49,152 tokens and as many merges). The server asks only for a few keys (the chat template, the tokens and
their types) when it describes a model, so this reader walks the header once, decoding only the values it was asked
for and skipping the rest by their lengths.
"""
from __future__ import annotations

import mmap
import struct
from array import array
from pathlib import Path
from typing import Any

MAGIC = b"GGUF"
# value type -> (struct format, size) for the fixed-size scalars of GGUF v2/v3
SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
           7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
ARRAY_CODES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


class GgufFormatError(ValueError):
    """The file is not a GGUF file this reader understands (wrong magic, version 1, a truncated header)."""


def read_metadata(path: Path | str, keys: set[str]) -> dict[str, Any]:
    """The values of `keys` that the file's header holds (absent keys are left out): scalars as Python values,
    strings as str, arrays as lists (numeric arrays as `array.array`)."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            return _read(data, keys)
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise GgufFormatError(f"{path}: unreadable GGUF header ({exc})") from None


def _read(data: mmap.mmap, keys: set[str]) -> dict[str, Any]:
    if data[:4] != MAGIC:
        raise GgufFormatError("not a GGUF file")
    version, _tensors, count = struct.unpack_from("<IQQ", data, 4)
    if version < 2:
        raise GgufFormatError(f"GGUF version {version} is not supported")
    offset, found = 24, {}
    for _ in range(count):
        key, offset = _string(data, offset)
        (kind,), offset = struct.unpack_from("<I", data, offset), offset + 4
        wanted = key in keys
        value, offset = _value(data, offset, kind, wanted)
        if wanted:
            found[key] = value
            if len(found) == len(keys):
                break
    return found


def _string(data: mmap.mmap, offset: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", data, offset)
    start = offset + 8
    return data[start:start + length].decode("utf-8"), start + length


def _value(data: mmap.mmap, offset: int, kind: int, decode: bool) -> tuple[Any, int]:
    if kind in SCALARS:
        fmt, size = SCALARS[kind]
        return (struct.unpack_from(fmt, data, offset)[0] if decode else None), offset + size
    if kind == STRING:
        if decode:
            return _string(data, offset)
        (length,) = struct.unpack_from("<Q", data, offset)
        return None, offset + 8 + length
    if kind != ARRAY:
        raise GgufFormatError(f"unknown value type {kind}")
    item, length = struct.unpack_from("<IQ", data, offset)
    offset += 12
    if item in SCALARS:  # a numeric array is one slice of the file
        size = SCALARS[item][1] * length
        if not decode:
            return None, offset + size
        values = array(ARRAY_CODES[item])
        values.frombytes(data[offset:offset + size])
        return values, offset + size
    values = []
    for _ in range(length):
        value, offset = _value(data, offset, item, decode)
        if decode:
            values.append(value)
    return values, offset
