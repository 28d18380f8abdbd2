"""``maskjobs detect``: the detector on pictures and video frames, without Ray."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from detector.detections import Detections
from detector.predictor import FaceMaskDetector
from jobs.errors import ImageReadError
from jobs.media import is_video, iter_video_batches, read_image_rgb

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameResult:
    """Detections of one picture (``frame`` 0) or one video frame."""

    video: str
    frame: int
    detections: Detections

    def to_json(self) -> dict:
        return {"video": self.video, "frame": self.frame, "detections": self.detections.to_records()}


def detect_paths(
    detector: FaceMaskDetector,
    paths: Sequence[str],
    *,
    batch_size: int = 16,
    errors: list[ImageReadError] | None = None,
) -> Iterator[FrameResult]:
    """Yields results per picture or frame; unreadable inputs are appended to ``errors``."""
    errors = errors if errors is not None else []
    for given in paths:
        path = Path(given)
        try:
            if is_video(path):
                for idx, frames in iter_video_batches(path, batch_size):
                    sizes = [(frames.shape[2], frames.shape[1])] * len(frames)
                    dets = detector.detect_prepared(detector.prepare(frames), sizes)
                    for i, d in zip(idx.tolist(), dets):
                        yield FrameResult(given, i, d)
            else:
                image = read_image_rgb(path)
                yield FrameResult(given, 0, detector.detect([image])[0])
        except ImageReadError as exc:
            logger.debug("skipping %s: %s", given, exc)
            errors.append(exc)
