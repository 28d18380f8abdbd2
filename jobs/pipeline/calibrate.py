"""Calibration frames for the int8 detector: keyframes spread over the job's videos.

The int8 model's activation ranges are set on frames of the data it will see. They are
chosen deterministically from the job's inputs (the same videos give the same frames, so
a resumed job quantizes exactly as the first run did), and read cheaply: keyframes decode
on their own, without the frames before them.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np

from detector.preprocess import resize_rgb
from jobs.errors import one_line
from jobs.video import ProbedVideo, VideoReadError, keyframe_before, open_video

logger = logging.getLogger(__name__)

MOST_VIDEOS = 8


class CalibrationPick(NamedTuple):
    """The frames of one video to calibrate on: source indices, ascending."""

    video: str
    path: str
    frames: list[int]


def pick_calibration(
    probed: list[ProbedVideo], total: int, *, most_videos: int = MOST_VIDEOS
) -> list[CalibrationPick]:
    """``[(video, path, frame indices)]``: ``total`` frames from up to ``most_videos`` videos
    evenly spread over ``probed`` (in job order), each video's share spread over its length.

    A frame is moved back to the keyframe before it where the video has enough distinct
    keyframes for its share, so that reading it decodes one frame; otherwise (few
    keyframes: short clips) the evenly spaced frames themselves are taken.
    """
    if not probed or total < 1:
        return []
    n = min(len(probed), most_videos, total)
    chosen = [probed[i * len(probed) // n] for i in range(n)]
    out = []
    for j, (video, path, info) in enumerate(chosen):
        share = total // n + (1 if j < total % n else 0)
        last = max(0, info.frames_total - 1)
        targets = np.unique(np.linspace(0, last, share + 2)[1:-1].round().astype(np.int64)) if last else np.zeros(1, np.int64)
        keys = np.asarray(info.keyframes, np.int64)
        if len(keys):
            snapped = np.unique(keyframe_before(keys, targets))
            if len(snapped) >= len(targets):
                targets = snapped
        out.append(CalibrationPick(video, path, [int(t) for t in targets[:share]]))
    return out


def read_calibration(path: str, frames: list[int], *, input_size: int) -> np.ndarray:
    """The Ray task: ``frames`` of ``path`` (ascending) resized to (k, S, S, 3) uint8 RGB.

    A video that cannot be read gives no frames (k = 0) rather than an error: calibration
    uses the others, and the video's own shards report what is wrong with it.
    """
    want = np.asarray(sorted(frames), np.int64)
    try:
        with open_video(path) as video:
            return np.stack([resize_rgb(image, input_size) for image in video.read(want)])
    except VideoReadError as exc:
        logger.warning("%s: not used for int8 calibration (%s)", path, exc.cause)
    except ValueError as exc:  # no frame at all to stack
        logger.warning("%s: not used for int8 calibration (%s)", path, one_line(exc))
    return np.zeros((0, input_size, input_size, 3), np.uint8)


def start_calibration(ray: Any, picks: list[CalibrationPick], *, input_size: int) -> list[Any]:
    """Starts reading ``picks`` in Ray tasks; returns their refs, in order (pass them to
    ``DetectorActor.calibrate`` as arguments: Ray hands the actor the arrays)."""
    remote = ray.remote(num_cpus=0.5, max_retries=1)(read_calibration)
    return [remote.remote(path, frames, input_size=input_size) for _, path, frames in picks]
