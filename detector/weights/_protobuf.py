"""A minimal reader of the protobuf wire format, enough for the published model files.

It decodes fields without a schema (no generated code, no ``protobuf`` package): the
importers name the field numbers they need. Varints, 64-bit, length-delimited and
32-bit fields are supported; groups (deprecated) are refused.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

VARINT, I64, LEN, I32 = 0, 1, 2, 5


class ProtobufError(ValueError):
    """The bytes are not a valid protobuf message."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise ProtobufError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ProtobufError("varint too long")


def fields(data: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yields ``(field_number, wire_type, value)``; LEN values are memoryviews into ``data``."""
    buf = memoryview(data)
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("field number 0")
        if wire == VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == I64:
            if pos + 8 > end:
                raise ProtobufError("truncated 64-bit field")
            yield number, wire, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == LEN:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ProtobufError("truncated length-delimited field")
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == I32:
            if pos + 4 > end:
                raise ProtobufError("truncated 32-bit field")
            yield number, wire, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")


def packed_varints(value: memoryview) -> list[int]:
    out = []
    pos = 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


def signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def floats(values: list[int | memoryview]) -> np.ndarray:
    """Joins a repeated float field, whether packed (LEN chunks) or not (I32 values)."""
    parts: list[np.ndarray] = []
    for v in values:
        if isinstance(v, memoryview):
            if len(v) % 4:
                raise ProtobufError("packed float field of odd length")
            parts.append(np.frombuffer(v, dtype="<f4"))
        else:
            parts.append(np.array([v], dtype="<u4").view("<f4"))
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def leading_fields(data: bytes | memoryview, limit: int) -> list[tuple[int, int, int | memoryview]]:
    """Up to ``limit`` leading fields of ``data``, for sniffing a file's first bytes.

    A length-delimited field that the end of ``data`` cuts short is returned with the
    bytes present; anything unparsable ends the list instead of raising.
    """
    buf = memoryview(data)
    out: list[tuple[int, int, int | memoryview]] = []
    pos = 0
    try:
        while pos < len(buf) and len(out) < limit:
            key, pos = _varint(buf, pos)
            number, wire = key >> 3, key & 7
            if number == 0:
                break
            if wire == VARINT:
                value, pos = _varint(buf, pos)
                out.append((number, wire, value))
            elif wire == LEN:
                length, pos = _varint(buf, pos)
                out.append((number, wire, buf[pos : pos + length]))
                pos += length
            elif wire in (I64, I32):
                size = 8 if wire == I64 else 4
                if pos + size > len(buf):
                    break
                out.append((number, wire, int.from_bytes(buf[pos : pos + size], "little")))
                pos += size
            else:
                break
    except ProtobufError:
        pass
    return out
