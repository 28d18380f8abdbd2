"""A minimal, bounds-checked reader of FlatBuffers tables, enough for TensorFlow Lite files.

No generated code and no ``flatbuffers`` package: the importer names the field indices
it needs (from the public schema). Every offset is checked against the buffer, so a
truncated or corrupt file raises :class:`FlatbufferError` instead of reading garbage.

Layout reminder: a table starts with an ``int32`` offset back to its vtable; the vtable
holds ``uint16`` vtable size, table size, then one ``uint16`` offset per field (0 when
absent). References (tables, vectors, strings) are ``uint32`` offsets relative to where
they are stored; vectors and strings start with a ``uint32`` length.
"""

from __future__ import annotations

import struct

import numpy as np


class FlatbufferError(ValueError):
    """The bytes are not a valid FlatBuffer for the expected schema."""


class Table:
    """One table at ``pos`` in ``buf``; field accessors take the schema's field index."""

    def __init__(self, buf: memoryview, pos: int) -> None:
        self._buf = buf
        self.pos = pos
        vtable = pos - _unpack(buf, "<i", pos)
        vt_size = _unpack(buf, "<H", vtable)
        if vt_size < 4 or vt_size % 2:
            raise FlatbufferError(f"bad vtable size {vt_size} at {vtable}")
        _check(buf, vtable, vt_size)
        self._slots = struct.unpack_from(f"<{(vt_size - 4) // 2}H", buf, vtable + 4)

    def _field(self, index: int) -> int | None:
        if index < len(self._slots) and self._slots[index]:
            return self.pos + self._slots[index]
        return None

    def _deref(self, at: int) -> int:
        return at + _unpack(self._buf, "<I", at)

    def scalar(self, index: int, fmt: str, default: int | float = 0) -> int | float:
        """A scalar field (``fmt`` a ``struct`` code such as ``"<I"``), or ``default``."""
        at = self._field(index)
        return default if at is None else _unpack(self._buf, fmt, at)

    def table(self, index: int) -> Table | None:
        at = self._field(index)
        return None if at is None else Table(self._buf, self._deref(at))

    def _vector(self, index: int, item_size: int) -> tuple[int, int] | None:
        at = self._field(index)
        if at is None:
            return None
        start = self._deref(at)
        length = _unpack(self._buf, "<I", start)
        _check(self._buf, start + 4, length * item_size)
        return start + 4, length

    def string(self, index: int) -> str:
        vec = self._vector(index, 1)
        if vec is None:
            return ""
        start, length = vec
        return bytes(self._buf[start : start + length]).decode("utf-8", "replace")

    def tables(self, index: int) -> list[Table]:
        vec = self._vector(index, 4)
        if vec is None:
            return []
        start, length = vec
        return [Table(self._buf, self._deref(start + 4 * i)) for i in range(length)]

    def array(self, index: int, dtype: str) -> np.ndarray:
        """A vector of scalars as a read-only array (``dtype`` little-endian, e.g. ``"<i4"``)."""
        item = np.dtype(dtype)
        vec = self._vector(index, item.itemsize)
        if vec is None:
            return np.zeros(0, item)
        start, length = vec
        return np.frombuffer(self._buf, dtype=item, count=length, offset=start)


def _check(buf: memoryview, pos: int, size: int) -> None:
    if pos < 0 or size < 0 or pos + size > len(buf):
        raise FlatbufferError(f"offset {pos}+{size} is outside the {len(buf)}-byte buffer")


def _unpack(buf: memoryview, fmt: str, pos: int) -> int:
    _check(buf, pos, struct.calcsize(fmt))
    return struct.unpack_from(fmt, buf, pos)[0]


def root(data: bytes | memoryview) -> Table:
    """The root table of a FlatBuffer."""
    buf = memoryview(data)
    return Table(buf, _unpack(buf, "<I", 0))
