"""Committing a shard: its detections concatenated, checked and written in one atomic step."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from jobs.errors import one_line
from jobs.pipeline.plan import Shard
from jobs.pipeline.records import DetectedBatch, empty_detections
from sinks.schema import frames_table
from sinks.store import OutputStore

logger = logging.getLogger(__name__)


def concat_detections(parts: list[DetectedBatch]) -> DetectedBatch:
    """One :class:`DetectedBatch` of ``parts``' frames and detections, in order."""
    if not parts:
        return empty_detections()
    return DetectedBatch(**{k: np.concatenate([p[k] for p in parts]) for k in parts[0]})  # type: ignore[typeddict-item]


def commit_shard(
    sink: OutputStore, shard: Shard, parts: list[DetectedBatch], *, class_names: tuple[str, ...]
) -> str | None:
    """Writes ``shard``'s rows from the detections of its batches (in decode order) to ``sink``.

    Returns None once committed, or the one-line reason the shard's videos fail instead: a
    frame count other than the shard's, detections that cannot be tabulated (a bug met on
    this shard's data: its videos fail, the job goes on), or rows the sink could not take
    (the sink retried transient errors already, :func:`sinks.atomic.atomic_write`): the
    shard is then retried like any failed one, and every other shard goes on.
    """
    cat = concat_detections(parts)
    expected = shard.num_frames
    if len(cat["frame"]) != expected:
        return f"decoded {len(cat['frame'])} of {expected} frames"
    try:
        table = frames_table(
            cat["video"], cat["frame"], cat["time_s"], cat["counts"], cat["labels"], cat["scores"], cat["boxes"],
            class_names,
        )
    except Exception as exc:  # a bug met on this shard's data: its videos fail, the job goes on
        logger.exception("shard %s: its detections could not be tabulated", shard.shard_id)
        return f"its detections could not be tabulated ({type(exc).__name__}: {one_line(exc, limit=300)})"
    try:
        sink.write(shard.shard_id, table, [s.span for s in shard.segments])
    except (OSError, pa.ArrowException) as exc:
        logger.warning("shard %s: its rows could not be written (%s)", shard.shard_id, one_line(exc, limit=300))
        return f"its rows could not be written to {sink.location} ({one_line(exc, limit=300)})"
    return None
