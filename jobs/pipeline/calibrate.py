"""Calibration frames for the int8 detector: keyframes spread over the job's videos.

The int8 model's activation ranges are set on frames of the data it will see. They are
chosen deterministically from the job's inputs (the same videos give the same frames, so
a resumed job quantizes exactly as the first run did), and read cheaply: keyframes decode
on their own, without the frames before them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from detector.preprocess import resize_rgb
from jobs.errors import one_line
from jobs.pipeline.timed import STARTED, run_timed
from jobs import faults
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
    faults.at_path("calib", path)  # test-only: a read that crashes or hangs, when $MASKJOBS_TEST_FAULT asks
    want = np.asarray(sorted(frames), np.int64)
    try:
        with open_video(path) as video:
            return np.stack([resize_rgb(image, input_size) for image in video.read(want)])
    except VideoReadError as exc:
        logger.warning("%s: not used for int8 calibration (%s)", path, exc.cause)
    except ValueError as exc:  # no frame at all to stack
        logger.warning("%s: not used for int8 calibration (%s)", path, one_line(exc))
    return np.zeros((0, input_size, input_size, 3), np.uint8)




def _read_task(path: str, frames: list[int], *, input_size: int) -> Iterator[str | np.ndarray]:
    """The Ray task: ``STARTED`` once it runs, then :func:`read_calibration`'s array."""
    import decord  # noqa: F401  (loaded before the clock starts)

    yield STARTED
    yield read_calibration(path, frames, input_size=input_size)


def collect_calibration(
    ray: Any, picks: list[CalibrationPick], *, input_size: int, timeout_s: float, total_s: float | None = None,
    poll_s: float = 0.2,
) -> tuple[list[Any], dict[str, str]]:
    """Reads ``picks`` in Ray tasks and waits for them, each for at most ``timeout_s`` from
    when its own task starts and all for at most ``total_s`` (default ``2 * timeout_s``).

    Returns ``(refs, skipped)``: refs of the non-empty (k, S, S, 3) arrays read, in pick order
    (pass them to ``DetectorActor.calibrate`` as arguments: Ray hands the actor the arrays,
    and they are all there, so no batch ever queues behind a read), and ``{video: why}`` for
    each video left out: unreadable, its read crashed, or it ran past a limit (cancelled).
    An empty ``refs`` leaves the detector in float32.
    """
    total_s = 2 * timeout_s if total_s is None else total_s
    remote = ray.remote(num_cpus=0.5, max_retries=0, num_returns="streaming")(_read_task)
    tasks = {remote.remote(path, frames, input_size=input_size): video for video, path, frames in picks}
    order = {video: i for i, (video, _, _) in enumerate(picks)}
    got: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for end in run_timed(ray, tasks, timeout_s=timeout_s, total_s=total_s, poll_s=poll_s):
        value = end.value
        if end.timed_out:
            limit = f"{timeout_s:g} s" if end.timed_out == "task" else f"{total_s:g} s for all calibration reads"
            skipped[end.key] = f"timed out after {limit}"
        elif isinstance(value, np.ndarray) and len(value):
            got[end.key] = end.ref
        elif isinstance(value, Exception):  # a Ray error: the read crashed or raised
            skipped[end.key] = f"read failed ({one_line(value, limit=200)})"
        elif value is None:
            skipped[end.key] = "no frames"
        else:
            skipped[end.key] = value if isinstance(value, str) else "no frame could be read"
    for video, why in skipped.items():
        logger.warning("%s: not used for int8 calibration (%s)", video, why)
    return [got[v] for v in sorted(got, key=order.__getitem__)], skipped
