"""Probing a video: what the planner needs to know. Runs inside a Ray worker."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from jobs.errors import one_line

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    """What a probe found. ``keyframes`` are frame indices where decoding can start."""

    frames_total: int
    fps: float
    duration_s: float
    width: int
    height: int
    codec: str
    keyframes: tuple[int, ...]


class ProbeError(RuntimeError):
    """The file is not a decodable video; the message says why in one line."""


def _fourcc(path: str) -> str:
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        code = int(cap.get(cv2.CAP_PROP_FOURCC)) if cap.isOpened() else 0
    finally:
        cap.release()
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00 ")
    return text if text.isprintable() else ""


def probe_video(path: str) -> VideoInfo:
    """Opens ``path`` with decord and reads its frame count, rate, size and keyframes."""
    import decord

    if not os.path.exists(path):
        raise ProbeError("no such file")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ProbeError("the file is empty")
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except (decord.DECORDError, RuntimeError) as exc:
        raise ProbeError(f"not a readable video ({one_line(exc)})") from None
    total = len(reader)
    if total <= 0:
        raise ProbeError("the video has no frames")
    height, width = reader[0].shape[:2] if total else (0, 0)
    fps = float(reader.get_avg_fps() or 0.0)
    try:
        keyframes = tuple(int(k) for k in np.asarray(reader.get_key_indices()).tolist())
    except (decord.DECORDError, RuntimeError):
        keyframes = ()
    duration = float(reader.get_frame_timestamp(total - 1)[1]) if total else 0.0
    return VideoInfo(
        frames_total=total,
        fps=fps,
        duration_s=duration,
        width=int(width),
        height=int(height),
        codec=_fourcc(path),
        keyframes=keyframes,
    )

