"""Output locations: a local path, or a URI that pyarrow's filesystems understand.

``s3://bucket/prefix``, ``gs://...``, ``hdfs://...``, ``file:///...``; anything else is a local
path. Messages and records name a location by :func:`display_location`, without credentials.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from detector.errors import InputError, one_line


def is_uri(location: str) -> bool:
    """``scheme://...``: a location for pyarrow's filesystems rather than a local path."""
    head, sep, _ = location.partition("://")
    return bool(sep) and head.isascii() and head.replace("+", "").isalnum() and len(head) > 1


def display_location(location: str | Path) -> str:
    """The location for messages and records: a URI without its credentials or query."""
    text = str(location)
    if not is_uri(text):
        return text
    scheme, rest = text.split("://", 1)
    netloc, sep, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{sep}{path.split('?', 1)[0]}"


def open_location(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of an output location: a local path or a pyarrow URI."""
    text = str(location)
    if not is_uri(text):
        return pafs.LocalFileSystem(), Path(text).absolute().as_posix()
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, ValueError) as exc:
        raise InputError(
            f"{display_location(text)}: not an output location pyarrow can open ({one_line(exc)})"
        ) from None
    return fs, path.rstrip("/")
