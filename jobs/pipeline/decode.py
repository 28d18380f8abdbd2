"""Decoding shards inside Ray workers: sampled frames, resized for the model, in batches."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from detector.preprocess import resize_rgb
from detector.tiling import cut_tiles, resolve_grid, tile_boxes
from jobs import faults
from jobs.pipeline.placement import Started, where
from jobs.pipeline.plan import Segment, Shard
from jobs.pipeline.records import DecodedBatch
from jobs.sparse import Tally, read_sampled
from jobs.video import OpenVideo, VideoReadError, open_video

logger = logging.getLogger(__name__)

class DecodeError(RuntimeError):
    """A segment could not be decoded; the message names the video and the cause."""


def decode_shard(
    shard: Shard, *, input_size: int, batch_size: int, threads: int = 1, tiles: object = None,
    target_px: float = 32.0,
) -> Iterator[Started | DecodedBatch]:
    """Yields :class:`Started` once the task runs, then batches (:class:`~jobs.pipeline.records.DecodedBatch`:
    ``{video (B,), frame (B,), time_s (B,), width (B,), height (B,), frames (B, S, S, 3) uint8
    RGB, decode_cpu_s (B,)}``) for the shard's sampled frames, in order.

    Only the sampled frames are converted to RGB and resized: the frames between two of them
    are not decoded where nothing refers to them (PyAV skipping non-reference frames,
    :mod:`jobs.sparse`), decoded without conversion where they are (or where decord reads, its
    ``skip_frames``), and not at all where a keyframe lies between them (a seek). Sampling
    keyframes alone decodes one frame per sample.
    ``decode_cpu_s`` is this process's CPU time for the batch (decord's threads included),
    spread over its frames: the driver sizes its decoders from it.

    decord's reader keeps decoding ahead on its own thread while its caller waits, and
    holds every frame it decodes (dmlc/decord#157, #208): a reader left open while this
    generator waits on Ray's backpressure would fill memory with full-size frames and
    spend CPU on frames past the segment's end. So each segment is read straight through,
    keeping only resized frames (``S*S*3`` bytes each), and its reader is closed before
    the segment's last batch is handed over. ``tiles`` (a :class:`~detector.tiling.TileGrid`,
    ``"auto"`` for ``target_px`` faces, or ``None``): each frame also yields its overlapping
    tiles (``tiles`` and ``per_frame`` in the batch), ``per_frame`` times the bytes. The caller sizes the generator's
    backpressure to a whole shard, which is what bounds memory: about ``shard frames x
    S*S*3`` bytes per running task, whatever the video's length or resolution.
    """
    with _opencv_threads(1):  # the task holds one CPU: OpenCV's pool made each resize cost 1.8x the CPU
        yield where()
        yield from _decode_segments(
            shard, input_size=input_size, batch_size=batch_size, threads=threads, tiles=tiles, target_px=target_px,
        )


@contextmanager
def _opencv_threads(n: int) -> Iterator[None]:
    """OpenCV's thread count for the block, restored after (it is process-wide)."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _decode_segments(
    shard: Shard, *, input_size: int, batch_size: int, threads: int, tiles: object = None, target_px: float = 32.0,
) -> Iterator[DecodedBatch]:
    """:func:`decode_shard`'s batches, segment by segment.

    A segment whose video cannot be opened raises :class:`DecodeError` (the shard fails and is
    retried). A video that opens but stops decoding part-way (a recording cut off mid-write, a
    damaged stretch) is not a failure of the shard: the frames before the damage are yielded,
    then one batch of no frames whose ``damaged`` says where and why
    (:data:`~jobs.pipeline.records.DecodedBatch`), and the shard goes on with its next segment.
    """
    for seg in shard.segments:
        faults.in_decode(seg.path)  # test-only: a crash or hang, when $MASKJOBS_TEST_FAULT asks
        try:
            video = open_video(seg.path, threads=threads)
        except VideoReadError as exc:  # named by the video's id: the driver records it against the video
            raise DecodeError(f"{seg.video}: {exc.cause}") from None
        yield from _decode_segment(
            seg, video, input_size=input_size, batch_size=batch_size, threads=threads, tiles=tiles, target_px=target_px,
        )


MAX_REOPENS = 16  # reopenings of a damaged video to get back frames decoded ahead of its damage
STUCK_TRIES = 3  # reopenings that get no further before a frame counts as the damage


class _Frames:
    """The (H, W, 3) frames of ``seg`` in order, from ``video``; where decoding fails, the video
    is opened again at the failing frame, as long as that gets further.

    decord decodes ahead on its own thread and reports an error when that thread meets it, not
    when the caller reaches it: frames already decoded before the damage would be lost, more or
    fewer with timing. Reopening at the frame reported (a seek decodes up to it before returning)
    gets them back, so the frames kept do not depend on timing, except inside the GOP that holds
    the damage, where a reopened reader's read-ahead can still win. ``damaged`` is then set to
    ``{"video", "frame", "error"}``: the first sampled frame that could not be decoded."""

    def __init__(self, seg: Segment, video: OpenVideo, threads: int) -> None:
        self.seg, self.video, self.threads = seg, video, threads
        self.damaged: dict[str, Any] | None = None
        self.tally = Tally()  # what the sampled reads skipped (:func:`jobs.sparse.read_sampled`)

    def __iter__(self) -> Iterator[np.ndarray]:
        frames = np.asarray(self.seg.frames, dtype=np.int64)
        pos, reopens, stuck = 0, 0, 0
        while pos < len(frames):
            start = pos
            try:
                for image in read_sampled(self.video, frames[pos:], tally=self.tally):
                    yield image
                    pos += 1
            except VideoReadError as exc:
                # No further than last time, again: the damage. One miss is not enough: a fresh
                # reader's read-ahead can reach the damage before the seek's frame is handed over
                # (seen on a loaded machine), so a frame counts as damaged after STUCK_TRIES misses.
                stuck = stuck + 1 if pos == start else 0
                if stuck >= STUCK_TRIES or reopens >= MAX_REOPENS:
                    self.damaged = {"video": self.seg.video, "frame": int(frames[pos]), "error": exc.cause}
                    return
                reopens += 1
                self.video.close()
                try:
                    self.video = open_video(self.seg.path, threads=self.threads)
                except VideoReadError as again:
                    self.damaged = {"video": self.seg.video, "frame": int(frames[pos]), "error": again.cause}
                    return


def _decode_segment(
    seg: Segment, video: OpenVideo, *, input_size: int, batch_size: int, threads: int, tiles: object = None,
    target_px: float = 32.0,
) -> Iterator[DecodedBatch]:
    frames = np.asarray(seg.frames, dtype=np.int64)
    source = _Frames(seg, video, threads)
    stream = iter(source)
    image = None
    boxes = None  # the frames' tile boxes, (T, 4), once the first frame's size is known; None: whole frames
    per = 1  # model inputs per frame
    pending: DecodedBatch | None = None  # a finished batch is handed over once the next one is read
    clock = time.process_time()
    for start in range(0, len(frames), batch_size):
        idx = frames[start : start + batch_size]
        small = None
        done = 0
        for image in stream:
            if small is None:
                if tiles is not None and boxes is None:
                    grid = resolve_grid(tiles, image.shape[1], image.shape[0], target_px=target_px, input_size=input_size)
                    boxes = tile_boxes(image.shape[1], image.shape[0], grid) if grid is not None else None
                    per = 1 if boxes is None else len(boxes)
                small = np.empty((len(idx) * per, input_size, input_size, 3), np.uint8)
            if boxes is None:
                small[done] = resize_rgb(image, input_size)
            else:
                cut_tiles(image, boxes, input_size, out=small[done * per : (done + 1) * per])
            done += 1
            if done == len(idx):
                break
        if small is None:
            small = np.empty((0, input_size, input_size, 3), np.uint8)
        idx, small = idx[:done], small[: done * per]
        stamps = np.zeros(0)
        if done:
            try:
                stamps = source.video.timestamps(idx)
            except VideoReadError as exc:
                source.damaged = {"video": seg.video, "frame": int(idx[0]), "error": exc.cause}
                idx, small = idx[:0], small[:0]
        n = len(idx)
        cpu = np.full(n, (time.process_time() - clock) / max(n, 1), np.float32)
        if pending is not None:
            yield pending
        clock = time.process_time()  # the hand-over's own cost is not decoding
        pending = None if n == 0 else DecodedBatch(
            video=np.array([seg.video] * n, dtype=object),
            frame=idx,
            time_s=stamps,
            width=np.full(n, image.shape[1], np.int32),
            height=np.full(n, image.shape[0], np.int32),
            frames=small,
            decode_cpu_s=cpu,
        )
        if pending is not None and boxes is not None:
            pending["tiles"] = np.tile(boxes, (n, 1))
            pending["per_frame"] = np.full(n, per, np.int32)
        if source.damaged is not None:
            logger.warning("%s: decoding stopped at frame %d (%s); the frames before it are kept",
                           seg.video, source.damaged["frame"], source.damaged["error"])
            break
    damaged = source.damaged
    del stream, image  # stops decord's read-ahead before the last hand-over
    source.video.close()
    if pending is not None:
        yield pending
    if damaged is not None:
        yield DecodedBatch(
            video=np.zeros(0, object), frame=np.zeros(0, np.int64), time_s=np.zeros(0),
            width=np.zeros(0, np.int32), height=np.zeros(0, np.int32),
            frames=np.zeros((0, input_size, input_size, 3), np.uint8), decode_cpu_s=np.zeros(0, np.float32),
            damaged=damaged,
        )
