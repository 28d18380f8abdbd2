"""The records passed between the pipeline's stages: decode task -> detector actor -> driver -> sink.

A batch crosses Ray as a plain dict of numpy arrays (Ray's batch idiom maps a batch dict to a
batch dict, and a dict of arrays pickles without copying them), so batches are TypedDicts:
named and checked, yet the same objects on the wire. Every array of a batch has one row per
frame (B) except the detections, which have one row per detection (K = ``counts.sum()``).
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

import numpy as np


class DecodedBatch(TypedDict):
    """What a decode task yields (:func:`jobs.pipeline.decode.decode_shard`)."""

    video: np.ndarray  # (B,) object: video ids
    frame: np.ndarray  # (B,) int64: source frame indices
    time_s: np.ndarray  # (B,) float64: frame start times
    width: np.ndarray  # (B,) int32: source frame size
    height: np.ndarray  # (B,) int32
    frames: np.ndarray  # (B, S, S, 3) uint8 RGB, resized to the model's input size S
    decode_cpu_s: np.ndarray  # (B,) float32: CPU seconds decoding took, per frame (the batch's, spread)
    # only on a segment's last item when its video is damaged (a recording cut off): the
    # sampled frame where decoding failed and why, {"video", "frame", "error"} (see Damage)
    damaged: NotRequired[dict[str, Any]]
    # Tiled detection (detector.tiles): ``frames`` is (N, S, S, 3), each frame's pictures (the
    # whole frame, then its tiles) in turn; ``tiles`` (N, 4) int64 their boxes in frame pixels,
    # ``per_frame`` (B,) int32 how many are each frame's. Absent: one whole picture per frame.
    tiles: NotRequired[np.ndarray]
    per_frame: NotRequired[np.ndarray]


class DetectedBatch(TypedDict):
    """What a detector actor returns for a :class:`DecodedBatch`
    (:meth:`jobs.pipeline.actor.DetectorActor.__call__`), and a shard's batches concatenated."""

    video: np.ndarray  # (B,) object
    frame: np.ndarray  # (B,) int64
    time_s: np.ndarray  # (B,) float64
    counts: np.ndarray  # (B,) int32: detections per frame
    labels: np.ndarray  # (K,) int64: class indices
    scores: np.ndarray  # (K,) float32
    boxes: np.ndarray  # (K, 4) float32 x1, y1, x2, y2 in source pixels
    decode_cpu_s: np.ndarray  # (B,) float32: the decoded batch's, passed through
    detect_cpu_s: np.ndarray  # (B,) float32: CPU seconds detection took, per frame (the batch's, spread)
    damaged: NotRequired[dict[str, Any]]  # passed on from the DecodedBatch


def empty_detections() -> DetectedBatch:
    """A :class:`DetectedBatch` of no frames."""
    return DetectedBatch(
        video=np.zeros(0, object), frame=np.zeros(0, np.int64), time_s=np.zeros(0),
        counts=np.zeros(0, np.int32), labels=np.zeros(0, np.int64),
        scores=np.zeros(0, np.float32), boxes=np.zeros((0, 4), np.float32),
        decode_cpu_s=np.zeros(0, np.float32), detect_cpu_s=np.zeros(0, np.float32),
    )
