"""Reading pictures and whole videos for the Ray-free ``detect`` command."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from jobs.errors import ImageReadError
from jobs.video import open_video

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".ppm", ".pgm"})
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".wmv", ".mpg", ".mpeg", ".vob", ".ts", ".m2ts", ".mts",
     ".m2t", ".3gp", ".ogv"}
)  # .vob: a DVD's program stream; .mts, .m2t: camcorders' (AVCHD, HDV) transport streams


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def read_image_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, or :class:`ImageReadError` naming the file and the cause."""
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if path.is_dir():
        raise ImageReadError(path, "is a directory")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "the file is empty")
    data = np.fromfile(path, dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageReadError(path, "not a readable picture (unknown format or corrupt data)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def iter_video_batches(path: Path, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(frame_indices, frames (B, H, W, 3) uint8 RGB)`` over every frame, in order.

    Raises :class:`jobs.video.VideoReadError` (an :class:`ImageReadError`) naming the file and
    the cause."""
    with open_video(path) as video:
        total = len(video)
        for start in range(0, total, batch_size):
            idx = np.arange(start, min(start + batch_size, total))
            yield idx, video.batch(idx)
