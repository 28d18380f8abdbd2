"""A bounds-checked little-endian reader for the binary weight formats (MXNet, Paddle)."""

from __future__ import annotations

import struct


class ByteReader:
    """Reads ``data`` front to back; running past its end raises ``ValueError``."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, size: int) -> memoryview:
        if size < 0 or self.pos + size > len(self.data):
            raise ValueError(f"the file ends at byte {len(self.data)}, {size} more bytes were expected at {self.pos}")
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def unpack(self, fmt: str) -> int:
        """One value of ``struct`` format ``fmt`` (e.g. ``"<Q"``)."""
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
