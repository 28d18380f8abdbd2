"""What a video's compliance figure covers: faces wide enough to be found whatever their label.

The detector loses masked faces at a larger size than unmasked ones (``benchmarks/README.md``,
small faces), so compliance over all detected faces is biased toward unmasked people far
from the camera. Each video gets ``min_face_px``: the narrowest face at which both labels are
reliably found in the mode it ran in (:func:`min_face_px`, from the
benchmark's stored curve). ``videos.parquet`` then also says:

- ``faces_reliable``, ``masked_reliable``, ``compliance_reliable``: the counts and the
  compliance over faces at least ``min_face_px`` wide (detected boxes' width, ``x2 - x1``):
  the figure that is not biased by distance;
- ``faces_near_min``: faces narrower than ``NEAR`` x ``min_face_px``, near or below it, whose
  labels' detection rates differ; many of them mean the overall figure leans on them.

The same restriction in ``frames.parquet`` is a filter on each detection's ``x2 - x1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from detector.reliability import reliable_fraction
from detector.spec import MASK
from detector.tiling import parse_tiles, resolve_grid, tile_boxes
from jobs.config import DetectorConfig
from sinks.schema import FRAMES_SCHEMA

NEAR = 1.25  # faces narrower than this many times the reliable width are "near or below" it

COLUMNS = ("min_face_px", "faces_reliable", "masked_reliable", "compliance_reliable", "faces_near_min")


def min_face_px(width: int, height: int, config: DetectorConfig, *, input_size: int) -> float:
    """The narrowest face (px) both labels are reliably found at in this video's mode: the
    stored curve's relative width (:func:`detector.reliability.reliable_fraction`) times the
    width of the smallest picture the model sees (the frame, or a tile of the grid
    :func:`detector.tiling.resolve_grid` gives it, as the decode tasks cut them)."""
    grid = resolve_grid(
        parse_tiles(config.tiles), width, height, target_px=config.tiles_target_px, input_size=input_size,
    )
    smallest = width
    if grid is not None:
        boxes = tile_boxes(width, height, grid)
        smallest = int((boxes[:, 2] - boxes[:, 0]).min())
    return reliable_fraction(input_size) * smallest


def face_widths(frames: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every detection of a ``frames`` table (``video``, ``detections`` columns): its video
    (K,) object, box width (K,) float32 and whether it is masked (K,) bool."""
    dets = frames.column("detections").combine_chunks()
    flat = pc.list_flatten(dets)
    parent = pc.list_parent_indices(dets).to_numpy()
    video = frames.column("video").to_numpy(zero_copy_only=False)[parent] if len(parent) else np.zeros(0, object)
    width = (pc.subtract(flat.field("x2"), flat.field("x1"))).to_numpy(zero_copy_only=False).astype(np.float32)
    masked = pc.equal(flat.field("label"), MASK).to_numpy(zero_copy_only=False).astype(bool)
    return video, width, masked


def coverage_totals(frames: pa.Table, min_px: dict[str, float], *, near: float = NEAR) -> dict[str, dict[str, Any]]:
    """Per video of ``min_px``: :data:`COLUMNS` from its detections in ``frames``."""
    video, width, masked = face_widths(frames)
    out: dict[str, dict[str, Any]] = {}
    for v, limit in min_px.items():
        mine = video == v
        wide = mine & (width >= limit)
        faces, masked_n = int(wide.sum()), int((wide & masked).sum())
        out[v] = {
            "min_face_px": float(limit),
            "faces_reliable": faces,
            "masked_reliable": masked_n,
            "compliance_reliable": masked_n / faces if faces else None,
            "faces_near_min": int((mine & (width < near * limit)).sum()),
        }
    return out


def read_frames(parts: list[str], filesystem: Any) -> pa.Table:
    """The ``video`` and ``detections`` columns of the committed frame files ``parts``."""
    if not parts:
        return FRAMES_SCHEMA.empty_table().select(["video", "detections"])  # every video failed, or none ran
    return ds.dataset(parts, format="parquet", filesystem=filesystem).to_table(columns=["video", "detections"])


def video_coverage(
    sink: Any, videos: list[tuple[str, int, int]], config: DetectorConfig, *, input_size: int
) -> dict[str, dict[str, Any]]:
    """:data:`COLUMNS` per ``(video, width, height)`` from what ``sink`` (an
    :class:`~sinks.store.OutputStore`) has committed."""
    limits = {v: min_face_px(w, h, config, input_size=input_size) for v, w, h in videos}
    return coverage_totals(read_frames(sink.reader.parts(), sink.fs), limits)


def add_coverage(rows: list[dict[str, Any]], coverage: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """``videos.parquet`` rows with :data:`COLUMNS` (null for videos that were not probed)."""
    empty = dict.fromkeys(COLUMNS)
    return [{**r, **coverage.get(r["video"], empty)} for r in rows]
