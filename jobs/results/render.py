"""Drawing on source frames, inside Ray workers: face thumbnails and annotated H.264 videos.

Frames are decoded with decord a batch at a time (never a whole video) and annotated
frames are piped raw into ffmpeg (imageio-ffmpeg's binary, which has libx264), written
aside and renamed into place.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from detector.spec import MASK, NO_MASK
from jobs.errors import one_line
from jobs.results.privacy import BLUR, hide_faces
from jobs.video import VideoReadError, open_video
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
    (:meth:`jobs.video.OpenVideo.read`: each GOP decoded once), which is closed when the
    generator is. Each array is valid until the next one is read. Raises :class:`RenderError`."""
    try:
        with open_video(path) as video:
            yield from video.read(frames)
    except VideoReadError as exc:
        raise RenderError(str(exc)) from None


def _batches(
    path: str, frames: np.ndarray, *, budget_bytes: int = 64 << 20
) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """``(indices, [(H, W, 3) uint8 RGB, ...])`` over ``frames`` (ascending), in chunks of at
    most ``budget_bytes`` of frames.

    Each chunk is read with a fresh reader that is closed before the chunk is handed over:
    decord keeps decoding ahead, holding every frame, while its caller waits (here on
    ffmpeg's pipe; see :class:`jobs.video.OpenVideo`), so an open reader would fill memory
    on a long video.
    """
    pos = 0
    while pos < len(frames):
        images: list[np.ndarray] = []
        reading = _read(path, frames[pos:])
        for image in reading:
            images.append(image.copy())
            if len(images) * image.nbytes >= budget_bytes:
                break
        reading.close()
        yield frames[pos : pos + len(images)], images
        pos += len(images)


def crop_thumbnail(image: np.ndarray, box: np.ndarray, *, margin: float = 0.35, privacy: str = BLUR) -> bytes:
    """JPEG of ``box`` (x1, y1, x2, y2) in ``image`` (H, W, 3 RGB) with a margin, 128 px high,
    the face hidden as ``privacy`` says (:func:`jobs.results.privacy.hide_faces`)."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    xa, ya = int(max(0, np.floor(x1 - mx))), int(max(0, np.floor(y1 - my)))
    xb, yb = int(min(w, np.ceil(x2 + mx))), int(min(h, np.ceil(y2 + my)))
    crop = image[ya:max(yb, ya + 1), xa:max(xb, xa + 1)]
    crop = hide_faces(crop.copy(), np.array([[x1 - xa, y1 - ya, x2 - xa, y2 - ya]]), privacy)
    scale = _THUMB_HEIGHT / crop.shape[0]
    crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), _THUMB_HEIGHT), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise RenderError("JPEG encoding failed")
    return data.tobytes()


def thumbnails(path: str, wanted: dict[int, tuple[int, np.ndarray]], *, privacy: str = BLUR) -> dict[int, bytes]:
    """``{track: JPEG}`` for ``wanted`` ``{track: (frame, box)}``, decoding only those frames.

    One reader reads the frames forward and each is cropped as soon as it is decoded, so
    decord never reads ahead while this waits (see :func:`_batches`) and no frame is kept.
    """
    by_frame: dict[int, list[int]] = {}
    for track, (frame, _) in wanted.items():
        by_frame.setdefault(int(frame), []).append(track)
    frames = np.array(sorted(by_frame), np.int64)
    out: dict[int, bytes] = {}
    if len(frames):
        for frame, image in zip(frames.tolist(), _read(path, frames)):
            for track in by_frame[frame]:
                out[track] = crop_thumbnail(image, wanted[track][1], privacy=privacy)
    return out


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
    written."""
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
            for idx, images in _batches(path, dets.frames):
                for image in images:
                    if image.shape[:2] != (height, width):
                        size = f"{image.shape[1]}x{image.shape[0]}"
                        raise RenderError(f"{path}: a frame near {int(idx[0])} is {size}, not {width}x{height}")
                    proc.stdin.write(draw_frame(image, dets, written, float(dets.time_s[written]), privacy=privacy).tobytes())
                    written += 1
            proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.wait() != 0:
                raise RenderError(f"{out}: ffmpeg failed ({one_line(err)})")
        except BaseException:
            proc.kill()  # before the temporary file is removed: ffmpeg may still be writing it
            proc.wait()
            raise
    return written


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
) -> dict[int, bytes]:
    """The Ray task: thumbnails for ``wanted`` tracks, and the annotated video if asked (faces
    hidden as ``privacy`` says)."""
    thumbs = thumbnails(path, wanted, privacy=privacy) if wanted else {}
    if annotate_to is not None:
        annotate_video(path, dets, annotate_to, rate=rate, width=width, height=height, crf=crf, preset=preset,
                       privacy=privacy)
    return thumbs
