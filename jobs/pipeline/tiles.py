"""Tiled detection in a job: the grid each video gets, what it costs, and the face size it covers.

``detector.tiles`` (``off``, ``auto`` or ``ROWSxCOLS``) is resolved per video from its probed
frame size (:func:`detector.tiling.resolve_grid`); the decode tasks cut the same tiles and the
actors merge them (:mod:`jobs.pipeline.decode`, :mod:`jobs.pipeline.actor`).
"""

from __future__ import annotations

from detector.tiling import TileGrid, parse_tiles, resolve_grid
from jobs.config import DetectorConfig
from jobs.video import ProbedVideo


def job_tiles(config: DetectorConfig) -> TileGrid | str | None:
    """``detector.tiles`` parsed: a grid, ``"auto"``, or ``None`` (whole frames, the reference)."""
    return parse_tiles(config.tiles)


def video_grid(width: int, height: int, config: DetectorConfig, *, input_size: int) -> TileGrid | None:
    """The grid a ``width`` x ``height`` video runs with (``None``: whole frames)."""
    return resolve_grid(
        job_tiles(config), width, height, target_px=config.tiles_target_px, input_size=input_size,
    )


def pictures_per_frame(probed: list[ProbedVideo], config: DetectorConfig, *, input_size: int) -> int:
    """The most model inputs any of ``probed``'s frames makes (1 without tiles): shards and
    batches shrink by this, so the resized pictures in flight stay within the untiled bound."""
    most = 1
    if job_tiles(config) is None:
        return most
    for p in probed:
        grid = video_grid(p.info.width, p.info.height, config, input_size=input_size)
        most = max(most, grid.per_frame if grid is not None else 1)
    return most
