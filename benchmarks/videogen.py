"""Generated footage with real faces: the shared photos panned, zoomed or walked along straight
paths, encoded by ffmpeg. The tests' video fixtures and the benchmarks' videos both come from here."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# (codec args, container suffix)
CODECS = {
    "h264": (["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"], ".mp4"),
    # What cameras and phones write: CABAC and B-frames, so decoding costs what it does in real use.
    "h264-main": (["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p"], ".mp4"),
    # A surveillance camera's settings: slower preset, High profile, more compression.
    "h264-camera": (["-c:v", "libx264", "-preset", "fast", "-crf", "26", "-profile:v", "high", "-pix_fmt", "yuv420p"], ".mp4"),
    "h264-444": (["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p"], ".mp4"),  # odd sizes too
    "hevc": (["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-x265-params", "log-level=error"], ".mkv"),
    "vp9": (["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-pix_fmt", "yuv420p"], ".webm"),
    "mpeg4": (["-c:v", "mpeg4", "-q:v", "3"], ".avi"),
    "mjpeg": (["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"], ".mov"),
}


@dataclass(frozen=True)
class Scene:
    """Photos side by side on a canvas, drifting right and zooming slowly."""

    photos: tuple[np.ndarray, ...]
    width: int = 640
    height: int = 360

    def frame(self, i: int) -> np.ndarray:
        canvas = np.full((self.height, self.width, 3), 40, np.uint8)
        slot = self.width // len(self.photos)
        for k, photo in enumerate(self.photos):
            zoom = 0.85 + 0.1 * np.sin(i / 15.0)
            scale = zoom * min(slot / photo.shape[1], self.height / photo.shape[0])
            w, h = int(photo.shape[1] * scale), int(photo.shape[0] * scale)
            img = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
            room = slot - w
            x0 = k * slot + (i * 2) % (room + 1)
            y0 = (self.height - h) // 2 + int(10 * np.cos(i / 10.0))
            ys, xs = max(0, y0), max(0, x0)
            ye, xe = min(self.height, y0 + h), min(self.width, x0 + w)
            canvas[ys:ye, xs:xe] = img[ys - y0 : ye - y0, xs - x0 : xe - x0]
        return canvas


def write_video(
    path: Path, scene: Scene | PathScene, frames: int, *, ffmpeg: str, codec: str = "h264", fps: float = 25.0,
    gop: int = 25, first: int = 0,
) -> Path:
    """Encodes frames ``first`` .. ``first + frames - 1`` of ``scene`` to ``path`` (its suffix
    picks the container)."""
    args, _ = CODECS[codec]
    cmd = [
        ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
        "-s", f"{scene.width}x{scene.height}", "-r", str(fps), "-i", "-", *args, "-g", str(gop), str(path),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    for i in range(first, first + frames):
        proc.stdin.write(scene.frame(i).tobytes())
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}")
    return path


@dataclass(frozen=True)
class Walker:
    """A photo whose top-left corner moves in a straight line from ``start`` to ``end``
    (canvas pixels) over the video, scaled to ``height`` pixels."""

    photo: np.ndarray
    start: tuple[float, float]
    end: tuple[float, float]
    height: int


@dataclass(frozen=True)
class PathScene:
    """Photos moving along known straight paths over ``frames`` frames (they never overlap
    when their paths do not)."""

    walkers: tuple[Walker, ...]
    frames: int
    width: int = 640
    height: int = 480

    def _placed(self, k: int, i: int) -> tuple[np.ndarray, int, int]:
        w = self.walkers[k]
        t = i / max(self.frames - 1, 1)
        scale = w.height / w.photo.shape[0]
        img = cv2.resize(w.photo, (round(w.photo.shape[1] * scale), w.height), interpolation=cv2.INTER_AREA)
        x0 = round(w.start[0] + t * (w.end[0] - w.start[0]))
        y0 = round(w.start[1] + t * (w.end[1] - w.start[1]))
        return img, x0, y0

    def photo_box(self, k: int, i: int) -> tuple[int, int, int, int]:
        """Where walker ``k``'s photo is in frame ``i``: x1, y1, x2, y2 (before clipping)."""
        img, x0, y0 = self._placed(k, i)
        return x0, y0, x0 + img.shape[1], y0 + img.shape[0]

    def frame(self, i: int) -> np.ndarray:
        canvas = np.full((self.height, self.width, 3), 40, np.uint8)
        for k in range(len(self.walkers)):
            img, x0, y0 = self._placed(k, i)
            ys, xs = max(0, y0), max(0, x0)
            ye, xe = min(self.height, y0 + img.shape[0]), min(self.width, x0 + img.shape[1])
            if ye > ys and xe > xs:
                canvas[ys:ye, xs:xe] = img[ys - y0 : ye - y0, xs - x0 : xe - x0]
        return canvas
