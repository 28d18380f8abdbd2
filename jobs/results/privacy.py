"""Hiding faces in the pictures a job keeps (thumbnails, annotated videos), and the modes.

Modes (``privacy.mode``, ``run --privacy``):

- ``blur`` (the default): each face box is Gaussian-blurred with a kernel as large as the
  face, so no feature that identifies a person survives, while the picture still shows
  where a person was and whether a mask covers the lower face;
- ``pixelate``: each face box is replaced by a coarse mosaic (about 6 blocks across);
- ``raw``: faces as filmed (asked for explicitly; ``job.json`` records it);
- ``aggregate``: no pictures and no boxes are kept at all, only counts (the finishing pass
  removes the boxes from the frames and tracks once tracks and zones are computed).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sinks.schema import DETECTION_TYPE
from sinks.store import OutputStore

logger = logging.getLogger(__name__)

BLUR = "blur"
PIXELATE = "pixelate"
RAW = "raw"
AGGREGATE = "aggregate"

_GROW = 0.15  # each side of a box grows by this share of its size before it is hidden
_BLOCKS = 6  # pixelate: mosaic blocks across a face


def hide_faces(image: np.ndarray, boxes: np.ndarray, mode: str) -> np.ndarray:
    """``image`` (H, W, 3 uint8) with the faces in ``boxes`` ((K, 4) x1, y1, x2, y2 in its
    pixels) blurred or pixelated in place; returned. ``raw`` (and ``aggregate``, which draws
    nothing) leave it as it is."""
    if mode not in (BLUR, PIXELATE) or len(boxes) == 0:
        return image
    h, w = image.shape[:2]
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    grow = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1) * _GROW
    x1 = np.clip(np.floor(boxes[:, 0] - grow[:, 0]), 0, w).astype(int)
    y1 = np.clip(np.floor(boxes[:, 1] - grow[:, 1]), 0, h).astype(int)
    x2 = np.clip(np.ceil(boxes[:, 2] + grow[:, 0]), 0, w).astype(int)
    y2 = np.clip(np.ceil(boxes[:, 3] + grow[:, 1]), 0, h).astype(int)
    for a, b, c, d in zip(x1, y1, x2, y2):
        if c - a < 2 or d - b < 2:
            continue
        region = image[b:d, a:c]
        if mode == PIXELATE:
            side = max(1, round(max(c - a, d - b) / _BLOCKS))
            small = cv2.resize(region, (max(1, (c - a) // side), max(1, (d - b) // side)), interpolation=cv2.INTER_AREA)
            region[:] = cv2.resize(small, (c - a, d - b), interpolation=cv2.INTER_NEAREST)
        else:
            sigma = max(c - a, d - b) / 4
            k = int(2 * round(sigma * 1.5) + 1)
            # blurred twice: one kernel this wide leaves a ghost of the edges of eyes and mouth
            region[:] = cv2.GaussianBlur(cv2.GaussianBlur(region, (k, k), sigma), (k, k), sigma)
    return image


def _without_boxes(table: pa.Table) -> pa.Table:
    """``table`` (frames rows) with every detection's x1, y1, x2, y2 null (label, score, track kept)."""
    column = table.column("detections").combine_chunks()
    flat = column.flatten()
    nulls = pa.nulls(len(flat), pa.float32())
    fields = [nulls if name in ("x1", "y1", "x2", "y2") else flat.field(name) for name in DETECTION_TYPE.names]
    structs = pa.StructArray.from_arrays(fields, fields=list(DETECTION_TYPE))
    offsets = column.offsets
    if column.offset:
        offsets = pc.subtract(offsets, offsets[0])
    detections = pa.ListArray.from_arrays(offsets, structs, type=pa.list_(DETECTION_TYPE), mask=column.is_null())
    return table.set_column(table.schema.get_field_index("detections"), "detections", detections)


def strip_boxes(sink: OutputStore) -> int:
    """``aggregate``: removes every face box from the committed frames files (each rewritten
    atomically, only where a box is left); returns how many files were rewritten."""
    rewritten = 0
    for path, _ in sink.part_segments():
        table = sink.read_part(path)
        flat = pc.list_flatten(table.column("detections"))
        if len(flat) == 0 or flat.combine_chunks().field("x1").null_count == len(flat):
            continue
        sink.replace_part(path, _without_boxes(table))
        rewritten += 1
    logger.info("privacy aggregate: boxes removed from %d frames files", rewritten)
    return rewritten
