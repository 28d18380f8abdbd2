"""Drawing on source frames, inside Ray workers: face thumbnails and annotated H.264 videos.

Thumbnails' frames are decoded with decord, annotated videos' in one forward pass with
OpenCV (see :func:`_stream`), a frame at a time; annotated frames are piped raw into ffmpeg (imageio-ffmpeg's binary, which has libx264), written
aside and renamed into place.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from detector.spec import MASK, NO_MASK
from jobs.errors import one_line
from jobs import faults
from jobs.results.privacy import BLUR, hide_faces
from jobs.sparse import read_sampled
from jobs.video import VideoReadError, open_video, utf8_alias
from sinks.atomic import atomic_output

logger = logging.getLogger(__name__)

MASK_RGB = (0, 200, 0)
NOMASK_RGB = (255, 0, 0)
_BATCH = 16
_THUMB_HEIGHT = 128


@dataclass(frozen=True)
class VideoDetections:
    """One video's tracked detections over its sampled frames, in frame order.

    Attributes:
        frames, time_s, counts: (F,) source frame index, time, detections in that frame.
        boxes: (K, 4) float x1, y1, x2, y2 in source pixels; ``masked`` (K,) bool;
        scores: (K,) float; tracks: (K,) int (< 0: no track).
    """

    frames: np.ndarray
    time_s: np.ndarray
    counts: np.ndarray
    boxes: np.ndarray
    masked: np.ndarray
    scores: np.ndarray
    tracks: np.ndarray

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)


class RenderError(RuntimeError):
    """A video could not be decoded or encoded for rendering; one line naming the cause."""


def _read(path: str, frames: np.ndarray) -> Iterator[np.ndarray]:
    """The (H, W, 3) uint8 RGB frames at ascending ``frames``, read forward by one reader
    (each GOP decoded once, its non-reference frames skipped where the codec allows:
    :func:`jobs.sparse.read_sampled`), which is closed when the generator is. Each array is
    valid until the next one is read. Raises :class:`RenderError`."""
    try:
        with open_video(path) as video:
            yield from read_sampled(video, frames)
    except VideoReadError as exc:
        raise RenderError(str(exc)) from None


def _stream(path: str, frames: np.ndarray, *, threads: int = 1) -> Iterator[np.ndarray]:
    """The (H, W, 3) uint8 RGB frames at ascending ``frames``, in one forward pass over the
    file with OpenCV's FFmpeg reader: frames between wanted ones are decoded but not
    converted (``grab``). Linear in the video's length, whatever its length.

    Not decord: its reader keeps decoding ahead on its own thread, holding the frames,
    while its caller waits (here on ffmpeg's pipe; ~850 MB measured on a 720p video), and
    reopening it to stop that (as this once did every 64 MB of frames) scans the whole file
    at each open: quadratic in the video's length. OpenCV decodes only when asked, so one
    frame is held at a time. Raises :class:`RenderError`.
    """
    with utf8_alias(path) as openable:  # OpenCV crashes on a name that is not UTF-8
        cap = cv2.VideoCapture(openable, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, threads])
    try:
        if not cap.isOpened():
            raise RenderError(f"{path}: not a readable video")
        # frames as shown: turned by the container's rotation (a phone's portrait video), as decord
        # turns them for the detections; stored sideways they were another size than the probe's
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        pos = 0  # the index of the frame the next grab decodes
        for idx in frames.tolist():
            while pos <= idx:
                if not cap.grab():
                    raise RenderError(f"{path}: decoding failed at frame {pos}")
                pos += 1
            ok, bgr = cap.retrieve()
            if not ok:
                raise RenderError(f"{path}: decoding failed at frame {idx}")
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def crop_thumbnail(image: np.ndarray, box: np.ndarray, *, margin: float = 0.35, privacy: str = BLUR) -> bytes:
    """JPEG of ``box`` (x1, y1, x2, y2) in ``image`` (H, W, 3 RGB) with a margin, 128 px high,
    the face hidden as ``privacy`` says (:func:`jobs.results.privacy.hide_faces`)."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    xa, ya = int(max(0, np.floor(x1 - mx))), int(max(0, np.floor(y1 - my)))
    xb, yb = int(min(w, np.ceil(x2 + mx))), int(min(h, np.ceil(y2 + my)))
    crop = image[ya:max(yb, ya + 1), xa:max(xb, xa + 1)]
    scale = _THUMB_HEIGHT / crop.shape[0]
    crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), _THUMB_HEIGHT), interpolation=cv2.INTER_AREA)
    # the face is hidden at the thumbnail's size: the same blur relative to the face, on a
    # picture 128 px high rather than the source's (a 1080p face: ~12 ms less per thumbnail)
    sx = crop.shape[1] / max(1, xb - xa)
    face = np.array([[(x1 - xa) * sx, (y1 - ya) * scale, (x2 - xa) * sx, (y2 - ya) * scale]])
    crop = hide_faces(crop, face, privacy)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise RenderError("JPEG encoding failed")
    return data.tobytes()


def thumbnails(path: str, wanted: dict[int, tuple[int, np.ndarray]], *, privacy: str = BLUR) -> dict[int, bytes]:
    """``{track: JPEG}`` for ``wanted`` ``{track: (frame, box)}``, decoding only those frames.

    One reader reads the frames forward and each is cropped as soon as it is decoded, so
    decord never reads ahead while this waits (see :func:`_stream`) and no frame is kept.
    """
    return _last(_thumbnail_steps(path, wanted, privacy=privacy))


def _last(steps: Iterator[Any]) -> Any:
    value = None
    for value in steps:
        pass
    return value


def _thumbnail_steps(
    path: str, wanted: dict[int, tuple[int, np.ndarray]], *, privacy: str = BLUR
) -> Iterator[int | dict[int, bytes]]:
    """:func:`thumbnails`, yielding a count after each frame decoded, then the result."""
    by_frame: dict[int, list[int]] = {}
    for track, (frame, _) in wanted.items():
        by_frame.setdefault(int(frame), []).append(track)
    frames = np.array(sorted(by_frame), np.int64)
    out: dict[int, bytes] = {}
    if len(frames):
        for n, (frame, image) in enumerate(zip(frames.tolist(), _read(path, frames))):
            for track in by_frame[frame]:
                out[track] = crop_thumbnail(image, wanted[track][1], privacy=privacy)
            yield n
    yield out


def draw_frame(image: np.ndarray, dets: VideoDetections, i: int, time_s: float, *, privacy: str = BLUR) -> np.ndarray:
    """``image`` (H, W, 3 RGB) with a compliance banner on top and frame ``i``'s boxes, labels,
    scores and track ids (green: Mask, red: NoMask), its faces hidden as ``privacy`` says."""
    out = np.ascontiguousarray(image)
    h, w = out.shape[:2]
    a, b = int(dets.offsets[i]), int(dets.offsets[i + 1])
    hide_faces(out, dets.boxes[a:b], privacy)
    faces, masked_n = b - a, int(dets.masked[a:b].sum())
    bar_h = _banner(out, time_s, faces, masked_n)
    thick = max(2, round(min(h, w) / 240))
    font = max(0.4, min(h, w) / 900)
    for box, masked, score, track in zip(dets.boxes[a:b], dets.masked[a:b], dets.scores[a:b], dets.tracks[a:b]):
        colour = MASK_RGB if masked else NOMASK_RGB
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        text = f"{'#' + str(int(track)) + ' ' if track >= 0 else ''}{MASK if masked else NO_MASK} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        above = y1 - thick - 2
        ty = above if above - th - 2 >= bar_h else y2 + th + thick + 2  # below the box if no room above
        cv2.rectangle(out, (x1 - thick // 2, ty - th - 2), (x1 + tw + 4, ty + base), colour, -1)
        cv2.putText(out, text, (x1 + 2, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _banner(out: np.ndarray, time_s: float, faces: int, masked: int) -> int:
    """Draws the top banner (time, counts, a masked/unmasked bar); returns its height."""
    h, w = out.shape[:2]
    bar_h = max(18, round(h / 20))
    cv2.rectangle(out, (0, 0), (w, bar_h), (20, 20, 20), -1)
    if faces:
        split = round(w * masked / faces)
        cv2.rectangle(out, (0, bar_h - 4), (split, bar_h), MASK_RGB, -1)
        cv2.rectangle(out, (split, bar_h - 4), (w, bar_h), NOMASK_RGB, -1)
    status = f"{masked / faces:.0%} masked" if faces else "no faces"
    text = f"t={time_s:.2f}s  faces {faces}  masked {masked}  unmasked {faces - masked}  {status}"
    scale = (bar_h - 8) / 30
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    scale *= min(1.0, (w - 12) / max(tw, 1))
    cv2.putText(out, text, (6, bar_h - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return bar_h


def annotate_video(
    path: str, dets: VideoDetections, out: str, *, rate: float, width: int, height: int, crf: int = 23,
    preset: str = "veryfast", privacy: str = BLUR,
) -> int:
    """Writes ``out``: the sampled frames with :func:`draw_frame`, H.264 yuv420p MP4 at ``rate``
    frames per second, even dimensions (padded), moov atom first (faststart). Returns frames
    written. One decoding pass over ``path`` (:func:`_stream`); memory: a frame or two."""
    return _last(_annotate_steps(path, dets, out, rate=rate, width=width, height=height, crf=crf, preset=preset,
                                 privacy=privacy))


PROGRESS_EVERY = 16  # frames between the progress counts a render step yields


def _annotate_steps(
    path: str, dets: VideoDetections, out: str, *, rate: float, width: int, height: int, crf: int, preset: str,
    privacy: str = BLUR,
) -> Iterator[int]:
    """:func:`annotate_video`, yielding the frames written so far every ``PROGRESS_EVERY``
    frames and once at the end."""
    import imageio_ffmpeg

    with atomic_output(out) as tmp:  # ``-f mp4``: the format is not read from the temporary name
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{width}x{height}", "-r", f"{rate:.6f}", "-i", "-",
            "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", preset, "-crf", str(crf),
            "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-an", "-f", "mp4", str(tmp),
        ]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin is not None
        written = 0
        try:
            for idx, image in zip(dets.frames.tolist(), _stream(path, dets.frames)):
                if image.shape[:2] != (height, width):
                    size = f"{image.shape[1]}x{image.shape[0]}"
                    raise RenderError(f"{path}: frame {idx} is {size}, not {width}x{height}")
                proc.stdin.write(draw_frame(image, dets, written, float(dets.time_s[written]), privacy=privacy).tobytes())
                written += 1
                if written % PROGRESS_EVERY == 0:
                    yield written
            proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.wait() != 0:
                raise RenderError(f"{out}: ffmpeg failed ({one_line(err)})")
        except BaseException:
            proc.kill()  # before the temporary file is removed: ffmpeg may still be writing it
            proc.wait()
            raise
    yield written


STARTED = "started"  # a render step's first item: its no-progress clock starts here


def render_video(
    path: str,
    dets: VideoDetections,
    wanted: dict[int, tuple[int, np.ndarray]],
    annotate_to: str | None,
    *,
    rate: float,
    width: int,
    height: int,
    crf: int,
    preset: str,
    privacy: str = BLUR,
) -> Iterator[str | int | dict[int, bytes]]:
    """The Ray task (a streaming generator): ``STARTED``, then a count as work is done (so the
    driver can tell a slow piece from a stuck one), then ``{track: JPEG}``: thumbnails for
    ``wanted`` tracks, and the annotated video written to ``annotate_to`` if asked."""
    yield STARTED
    faults.at_path("render", path)  # test-only: a stuck piece, when $MASKJOBS_TEST_FAULT asks
    thumbs: dict[int, bytes] = {}
    if wanted:
        for step in _thumbnail_steps(path, wanted, privacy=privacy):
            if isinstance(step, dict):
                thumbs = step
            else:
                yield step
    if annotate_to is not None:
        yield from _annotate_steps(path, dets, annotate_to, rate=rate, width=width, height=height, crf=crf,
                                   preset=preset, privacy=privacy)
    yield thumbs
