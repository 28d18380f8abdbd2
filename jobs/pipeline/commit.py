"""Committing a shard: its detections concatenated, checked and written in one atomic step."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from jobs.errors import one_line
from jobs.identity import READER
from jobs.pipeline.plan import Shard
from jobs.pipeline.records import DetectedBatch, empty_detections
from sinks.layout import SegmentRange
from sinks.schema import frames_table
from sinks.store import OutputStore

logger = logging.getLogger(__name__)


def concat_detections(parts: list[DetectedBatch]) -> DetectedBatch:
    """One :class:`DetectedBatch` of ``parts``' frames and detections, in order (their
    ``damaged`` notes left out: see :func:`damage_notes`)."""
    if not parts:
        return empty_detections()
    return DetectedBatch(**{k: np.concatenate([p[k] for p in parts]) for k in empty_detections()})  # type: ignore[typeddict-item]


def damage_notes(parts: list[DetectedBatch]) -> list[dict[str, Any]]:
    """The ``damaged`` notes among ``parts``: ``{"video", "frame", "error"}`` per segment whose
    video stopped decoding at ``frame`` (:func:`jobs.pipeline.decode.decode_shard`)."""
    return [p["damaged"] for p in parts if "damaged" in p]


def _committed_spans(shard: Shard, damage: list[dict[str, Any]]) -> tuple[list[SegmentRange], np.ndarray]:
    """What ``shard`` commits given ``damage``: each segment's frames up to the one where its
    video stopped decoding (all of them without damage), as spans and as frame indices."""
    spans, frames = [], []
    for seg in shard.segments:
        wanted = np.asarray(seg.frames, np.int64)
        cut = [d["frame"] for d in damage if d["video"] == seg.video and seg.frames[0] <= d["frame"] <= seg.frames[-1]]
        k = int(np.searchsorted(wanted, min(cut))) if cut else len(wanted)
        if k:
            spans.append(SegmentRange(seg.video, int(wanted[0]), int(wanted[k - 1])))
            frames.append(wanted[:k])
    return spans, np.concatenate(frames) if frames else np.zeros(0, np.int64)


def commit_shard(
    sink: OutputStore, shard: Shard, parts: list[DetectedBatch], *, class_names: tuple[str, ...],
    inputs: dict[str, dict[str, Any]] | None = None,
) -> str | None:
    """Writes ``shard``'s rows from the detections of its batches (in decode order) to ``sink``,
    with the identities of its videos' files (``inputs``, by video id, where known) and how
    their frames were numbered (:data:`jobs.identity.READER`).

    A segment whose video stopped decoding part-way (a ``damaged`` note) commits the frames
    before the damage, recorded as a shorter span, so a rerun plans the rest again.

    Returns None once committed, or the one-line reason the shard's videos fail instead: a
    frame count other than the shard's, detections that cannot be tabulated (a bug met on
    this shard's data: its videos fail, the job goes on), or rows the sink could not take
    (the sink retried transient errors already, :func:`sinks.atomic.atomic_write`): the
    shard is then retried like any failed one, and every other shard goes on.
    """
    cat = concat_detections(parts)
    spans, expected = _committed_spans(shard, damage_notes(parts))
    if len(cat["frame"]) != len(expected) or not np.array_equal(cat["frame"], expected):
        return f"decoded {len(cat['frame'])} of {len(expected)} frames"
    if not spans:  # every segment stopped at its first frame: nothing to commit
        return None
    try:
        table = frames_table(
            cat["video"], cat["frame"], cat["time_s"], cat["counts"], cat["labels"], cat["scores"], cat["boxes"],
            class_names,
        )
    except Exception as exc:  # a bug met on this shard's data: its videos fail, the job goes on
        logger.exception("shard %s: its detections could not be tabulated", shard.shard_id)
        return f"its detections could not be tabulated ({type(exc).__name__}: {one_line(exc, limit=300)})"
    videos = {s.video for s in spans}
    identities = {v: {**((inputs or {}).get(v) or {}), "reader": READER} for v in sorted(videos)}
    try:
        sink.write(shard.shard_id, table, spans, identities)
    except (OSError, pa.ArrowException) as exc:
        logger.warning("shard %s: its rows could not be written (%s)", shard.shard_id, one_line(exc, limit=300))
        return f"its rows could not be written to {sink.location} ({one_line(exc, limit=300)})"
    return None
