"""Probing a video: what the planner needs to know. Runs inside a Ray worker."""

from __future__ import annotations

import logging

import numpy as np

from jobs.video import VideoInfo, VideoReadError, open_video, utf8_alias

__all__ = ["ProbeError", "probe_video"]

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
