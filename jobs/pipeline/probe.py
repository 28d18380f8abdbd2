"""Probing a video: what the planner needs to know. Runs inside a Ray worker."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from jobs.errors import one_line
from jobs.inputs import VideoInput
from jobs.video import VideoInfo, VideoReadError, open_video, utf8_alias

__all__ = ["ProbeError", "probe_all", "probe_video"]

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
        total = len(reader)
        if total <= 0:
            raise ProbeError("the video has no frames")
        height, width = reader[0].shape[:2] if total else (0, 0)
        fps = float(reader.get_avg_fps() or 0.0)
        try:
            keyframes = tuple(int(k) for k in np.asarray(video.keyframes()).tolist())
        except VideoReadError:  # no usable index: the planner cuts shards anywhere
            keyframes = ()
        duration = float(reader.get_frame_timestamp(total - 1)[1]) if total else 0.0
        codec = _fourcc(video.source)  # while a remote video's staged copy is held
    return VideoInfo(
        frames_total=total,
        fps=fps,
        duration_s=duration,
        width=int(width),
        height=int(height),
        codec=codec,
        keyframes=keyframes,
    )


STARTED = "started"  # a probe task's first item: its time limit runs from here, not from when it queued


def _probe_task(path: str) -> Iterator[str | VideoInfo]:
    """The Ray task: ``STARTED`` once it runs (the decoder libraries loaded), then the probe."""
    import cv2  # noqa: F401  (imported before the clock starts: a cold worker's start-up is not the file's fault)
    import decord  # noqa: F401

    yield STARTED
    yield probe_video(path)


def probe_all(
    ray: Any, videos: Sequence[VideoInput], timeout_s: float, *, poll_s: float = 0.5
) -> tuple[dict[str, VideoInfo], dict[str, str]]:
    """Probes every video in Ray workers; returns ``({video: info}, {video: error})``.

    Each probe has ``timeout_s`` from when its own task starts running: probes queued behind
    others (thousands of files, or a few slow ones on slow storage) wait without a clock.
    A probe that crashes, raises or runs past its limit (cancelled: "the decoder hangs")
    fails its own video only.
    """
    remote = ray.remote(num_cpus=0.5, max_retries=0, num_returns="streaming")(_probe_task)
    pending = {remote.remote(v.path): v for v in videos}
    started: dict[Any, float] = {}
    infos: dict[str, VideoInfo] = {}
    errors: dict[str, str] = {}
    while pending:
        gens = list(pending)
        ray.wait(gens, num_returns=1, timeout=poll_s, fetch_local=False)
        ready = set(ray.wait(gens, num_returns=len(gens), timeout=0, fetch_local=False)[0])
        now = time.monotonic()
        for gen, video in list(pending.items()):
            if gen in ready:
                try:
                    value = ray.get(next(gen))
                except StopIteration:
                    value = None
                except ProbeError as exc:  # Ray re-raises it wrapped; ``cause`` is the original
                    value = ProbeError(str(getattr(exc, "cause", None) or exc))
                except Exception as exc:  # a Ray error: the probe worker crashed or raised
                    value = ProbeError(f"probe failed ({one_line(exc, limit=300)})")
                if isinstance(value, str):  # STARTED: the clock starts
                    started[gen] = now
                    continue
                del pending[gen]
                if isinstance(value, VideoInfo):
                    infos[video.video] = value
                else:
                    errors[video.video] = str(value or "probe failed (no result)")
            elif gen in started and now - started[gen] > timeout_s:
                ray.cancel(gen, force=True)
                del pending[gen]
                errors[video.video] = f"probe timed out after {timeout_s:g} s (the decoder hangs on this file)"
    return infos, errors
