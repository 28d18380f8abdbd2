"""Probing a video: what the planner needs to know. Runs inside a Ray worker."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from jobs.errors import one_line
from jobs.pipeline.timed import STARTED, run_timed
from jobs.inputs import VideoInput
from jobs.remote import is_remote
from jobs.video import VideoInfo, VideoReadError, open_video, utf8_alias

__all__ = ["ProbeError", "Probes", "probe_all", "probe_video", "start_probes"]

logger = logging.getLogger(__name__)


class ProbeError(RuntimeError):
    """The file is not a decodable video; the message says why in one line (without the path:
    the driver records it against the video)."""


def _fourcc(path: str) -> str:
    import cv2

    with utf8_alias(path) as openable:  # OpenCV crashes on a name that is not UTF-8
        cap = cv2.VideoCapture(openable)
    try:
        code = int(cap.get(cv2.CAP_PROP_FOURCC)) if cap.isOpened() else 0
    finally:
        cap.release()
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00 ")
    return text if text.isprintable() else ""


def probe_video(path: str) -> VideoInfo:
    """Opens ``path`` with decord and reads its frame count, rate, size and keyframes."""
    try:
        video = open_video(path)
    except VideoReadError as exc:
        raise ProbeError(exc.cause) from None
    with video:
        reader = video.reader
        total = len(video)  # the frames shown (an edit list's hidden ones left out)
        if total <= 0:
            raise ProbeError("the video has no frames")
        try:
            height, width = video.frame_size()
        except VideoReadError as exc:
            raise ProbeError(exc.cause) from None
        fps = float(reader.get_avg_fps() or 0.0)
        try:
            keyframes = tuple(int(k) for k in np.asarray(video.keyframes()).tolist())
        except VideoReadError:  # no usable index: the planner cuts shards anywhere
            keyframes = ()
        duration = video.end_s()
        codec = _fourcc(video.source)  # while a remote video's staged copy is held
    return VideoInfo(
        frames_total=total,
        fps=fps,
        duration_s=duration,
        width=int(width),
        height=int(height),
        codec=codec,
        keyframes=keyframes,
        copied=video.source != video.path and not is_remote(path),
        remuxed=video.remuxed,
    )




class Probes(NamedTuple):
    """What :func:`probe_all` found: ``infos`` ``{video: VideoInfo}`` of the readable videos,
    ``errors`` ``{video: one-line cause}`` of the others, and ``created`` ``{video: creation_time
    or None}`` of the readable ones (None: the container has none, or it was not asked for)."""

    infos: dict[str, VideoInfo]
    errors: dict[str, str]
    created: dict[str, datetime | None]


def _probe_task(path: str, tags: bool = False) -> Iterator[str | tuple[VideoInfo, datetime | None]]:
    """The Ray task: ``STARTED`` once it runs (the decoder libraries loaded), then the probe and,
    for ``tags``, the container's creation_time (:func:`jobs.metadata.creation_time`)."""
    import cv2  # noqa: F401  (imported before the clock starts: a cold worker's start-up is not the file's fault)
    import decord  # noqa: F401

    yield STARTED
    info = probe_video(path)
    yield info, (_creation_time(path) if tags else None)


def _creation_time(path: str) -> datetime | None:
    from jobs.metadata import creation_time

    try:
        return creation_time(path)
    except Exception as exc:  # a tag never fails the probe: the start stays unknown
        logger.warning("%s: creation_time not read (%s)", path, one_line(exc, limit=200))
        return None


def start_probes(ray: Any, videos: Sequence[VideoInput], *, tags: Collection[str] = ()) -> dict[Any, str]:
    """Submits one probe task per video; returns ``{task: video}`` for :func:`probe_all`.
    The videos in ``tags`` (ids) also have their container's creation_time read, in the same task.

    The first probes, submitted before the detector actors, take the workers Ray started with
    the driver, rather than waiting for new worker processes beside the actors' start (the 30-s
    1080p clip on 2 cores: probe phase 1.43 -> 0.84 s, medians of 3 runs alternating). Tags read
    in separate tasks cost more worker processes starting on the same cores (2 long videos,
    probes alone 0.94 s, beside 2 tag tasks 1.8-1.9 s).
    """
    remote = ray.remote(num_cpus=0.5, max_retries=0, num_returns="streaming")(_probe_task)
    return {remote.remote(v.path, v.video in tags): v.video for v in videos}


def probe_all(
    ray: Any, videos: Sequence[VideoInput] | dict[Any, str], timeout_s: float, *, poll_s: float = 0.5
) -> Probes:
    """Probes every video in Ray workers.

    ``videos``: the videos, or the probes :func:`start_probes` has already submitted.
    Each probe has ``timeout_s`` from when its own task starts running: probes queued behind
    others (thousands of files, or a few slow ones on slow storage) wait without a clock.
    A probe that crashes, raises or runs past its limit (cancelled: "the decoder hangs")
    fails its own video only.
    """
    tasks = videos if isinstance(videos, dict) else start_probes(ray, videos)
    found = Probes({}, {}, {})
    infos, errors = found.infos, found.errors
    for end in run_timed(ray, tasks, timeout_s=timeout_s, poll_s=poll_s):
        value = end.value
        if end.timed_out:
            errors[end.key] = f"probe timed out after {timeout_s:g} s (the decoder hangs on this file)"
        elif isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], VideoInfo):
            infos[end.key], found.created[end.key] = value
        elif isinstance(value, ProbeError):  # Ray re-raises it wrapped; ``cause`` is the original
            errors[end.key] = str(getattr(value, "cause", None) or value)
        elif isinstance(value, Exception):  # a Ray error: the probe worker crashed or raised
            errors[end.key] = f"probe failed ({one_line(value, limit=300)})"
        else:
            errors[end.key] = str(value or "probe failed (no result)")
    return found
