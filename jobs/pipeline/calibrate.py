"""Calibration frames for the int8 detector: keyframes spread over the job's videos.

The int8 model's activation ranges are set on frames of the data it will see. They are
chosen deterministically from the job's inputs (the same videos give the same frames, so
a resumed job quantizes exactly as the first run did), and read cheaply: keyframes decode
on their own, without the frames before them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from detector.preprocess import resize_rgb
from jobs.errors import one_line
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


STARTED = "started"  # a read task's first item: its time limit runs from here


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
    pending = {remote.remote(path, frames, input_size=input_size): video for video, path, frames in picks}
    order = {video: i for i, (video, _, _) in enumerate(picks)}
    got: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    started: dict[Any, float] = {}
    deadline = time.monotonic() + total_s
    while pending:
        gens = list(pending)
        ray.wait(gens, num_returns=1, timeout=poll_s, fetch_local=False)
        ready = set(ray.wait(gens, num_returns=len(gens), timeout=0, fetch_local=False)[0])
        now = time.monotonic()
        for gen, video in list(pending.items()):
            if gen in ready:
                try:
                    ref = next(gen)
                    value = ray.get(ref)
                except StopIteration:
                    ref, value = None, "no frames"
                except Exception as exc:  # a Ray error: the read crashed or raised
                    ref, value = None, f"read failed ({one_line(exc, limit=200)})"
                if isinstance(value, str) and value == STARTED:
                    started[gen] = now
                    continue
                del pending[gen]
                if isinstance(value, np.ndarray) and len(value):
                    got[video] = ref
                else:
                    skipped[video] = value if isinstance(value, str) else "no frame could be read"
            elif (gen in started and now - started[gen] > timeout_s) or now > deadline:
                ray.cancel(gen, force=True)
                del pending[gen]
                limit = f"{timeout_s:g} s" if gen in started else f"{total_s:g} s for all calibration reads"
                skipped[video] = f"timed out after {limit}"
    for video, why in skipped.items():
        logger.warning("%s: not used for int8 calibration (%s)", video, why)
    return [got[v] for v in sorted(got, key=order.__getitem__)], skipped
