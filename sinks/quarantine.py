"""Setting aside committed files that cannot be read, so that one damaged file (a disk error, a
copy cut short, a hand edit) costs only its own frames, not every later run.

A committed shard file whose Parquet footer or segment list cannot be read is moved to
``OUT/quarantine/`` (never deleted: it may still be worth a look) and said so in one warning
line; its frames are then simply not committed, so the run plans and processes them again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from detector.errors import one_line
from sinks.atomic import make_dirs
from sinks.layout import INPUTS_KEY, SEGMENTS_KEY, OutputLayout

logger = logging.getLogger(__name__)


def check_part(layout: OutputLayout, path: str) -> str | None:
    """Why the committed shard file ``path`` cannot be used (one line), or None if it can:
    its footer, schema and metadata are read and checked, not its pages."""
    try:
        schema = pq.read_schema(path, filesystem=layout.fs)
        meta = schema.metadata or {}
        segments = json.loads(meta.get(SEGMENTS_KEY, b"[]"))
        for video, first, last in segments:
            if not isinstance(video, str) or int(first) > int(last):
                raise ValueError(f"bad segment {[video, first, last]!r}")
        if not isinstance(json.loads(meta.get(INPUTS_KEY, b"{}")), dict):
            raise ValueError("bad input identities")
        if "video" not in schema.names or "frame" not in schema.names:
            raise ValueError("not a frames file")
    except (OSError, pa.ArrowException, ValueError, TypeError) as exc:
        return one_line(exc, limit=200)
    return None


def quarantine(layout: OutputLayout, path: str, reason: str) -> str:
    """Moves ``path`` into ``OUT/quarantine/`` (a timestamp added to its name); returns where."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    dest = posixpath.join(layout.quarantine_dir, f"{posixpath.basename(path)}.{stamp}")
    make_dirs(layout.quarantine_dir, fs=layout.fs)
    layout.fs.move(path, dest)
    logger.warning("%s: unreadable (%s); moved to %s, its frames will be processed again",
                   path, reason, dest)
    return dest


def quarantine_unreadable_parts(layout: OutputLayout, parts: list[str]) -> list[str]:
    """Moves each of ``parts`` that :func:`check_part` rejects aside; returns those moved."""
    moved = []
    for path in parts:
        reason = check_part(layout, path)
        if reason is not None:
            quarantine(layout, path, reason)
            moved.append(path)
    return moved
