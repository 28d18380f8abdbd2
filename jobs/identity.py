"""What a video file is, cheaply: its size, modification time and a hash of its ends.

Resuming a job trusts the rows already committed for a video only while its file is the one
they were decoded from. A file counts as the same when its size and :func:`content_hash` are
(its ``mtime_ns`` is recorded too, but a copy or a ``touch`` that keeps the bytes keeps the
rows): a replaced, re-encoded, grown or cut file is processed again from scratch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import Any

logger = logging.getLogger(__name__)

EDGE_BYTES = 64 * 1024
HASH_NAME = "sha256-size-head-tail-64k"  # what ``content_hash`` is, for readers of the output
# How frames are numbered, recorded beside each identity (``"reader"``; alone for a file with
# none: a bucket's, a pipe's). 2: as FFmpeg shows them, a copied file's
# hidden and undecodable leading frames left out (:mod:`jobs.remux`); before it (absent), such a
# file's rows could be for other frames: :func:`jobs.pipeline.resume.drop_misread_videos`.
READER = 2


def content_hash(path: str, size: int) -> str:
    """SHA-256 of the size (8 bytes, little-endian), the first and the last 64 KiB of the file
    (the whole file when it is smaller than 128 KiB), as hex."""
    h = hashlib.sha256(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        h.update(f.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            f.seek(max(EDGE_BYTES, size - EDGE_BYTES))
            h.update(f.read(EDGE_BYTES))
    return h.hexdigest()


def identify(path: str) -> dict[str, Any] | None:
    """``{"size", "mtime_ns", "content_hash"}`` of the regular file ``path``; None for what has no
    stable identity (a named pipe, a device) or cannot be read (the probe then says why)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "content_hash": content_hash(path, st.st_size)}
    except OSError as exc:
        logger.debug("%r: no identity (%s)", path, exc)
        return None


def identify_all(paths: dict[str, str], *, threads: int = 8) -> dict[str, dict[str, Any] | None]:
    """:func:`identify` of every ``{video: path}``, reading a few files at once (storage latency,
    not CPU, is what this waits on)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return dict(zip(paths, pool.map(identify, paths.values())))


def same_file(recorded: dict[str, Any] | None, current: dict[str, Any] | None) -> bool:
    """Whether rows decoded from ``recorded`` still belong to ``current``; unknown (None, e.g.
    rows written before identities were recorded, or a pipe) counts as the same."""
    if not recorded or not current or "size" not in recorded:
        return True
    return recorded.get("size") == current["size"] and recorded.get("content_hash") == current["content_hash"]


def describe_change(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """One phrase: how ``current`` differs from ``recorded``."""
    if recorded.get("size") != current["size"]:
        return f"its size went from {recorded.get('size')} to {current['size']} bytes"
    return "its content changed (same size)"
