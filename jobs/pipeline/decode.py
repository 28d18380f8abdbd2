"""Decoding shards inside Ray workers: sampled frames, resized for the model, in batches."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from detector.preprocess import resize_rgb
from jobs.pipeline.plan import Shard
from jobs.pipeline.records import DecodedBatch
from jobs.video import VideoReadError, open_video

logger = logging.getLogger(__name__)

# Test-only fault injection, for proving failure isolation with real process crashes and
# hangs: comma-separated "crash:<text>" or "hang:<text>" act on segments whose path
# contains <text>. Unset in normal use.
FAULT_ENV = "MASKJOBS_TEST_FAULT"


def _inject_fault(path: str) -> None:
    for spec in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        kind, _, needle = spec.partition(":")
        if not needle or needle not in path:
            continue
        if kind == "crash":
            os._exit(134)
        if kind == "hang":
            while True:
                time.sleep(3600)


STARTED = "started"  # the first item: lets the driver time a shard from when it runs, not queues


class DecodeError(RuntimeError):
    """A segment could not be decoded; the message names the video and the cause."""


def decode_shard(
    shard: Shard, *, input_size: int, batch_size: int, threads: int = 1
) -> Iterator[str | DecodedBatch]:
    """Yields ``STARTED`` once the task runs, then batches (:class:`~jobs.pipeline.records.DecodedBatch`:
    ``{video (B,), frame (B,), time_s (B,), width (B,), height (B,), frames (B, S, S, 3) uint8
    RGB, decode_cpu_s (B,)}``) for the shard's sampled frames, in order.

    Only the sampled frames are converted to RGB and resized: the frames between two of them
    are decoded without conversion (decord's ``skip_frames``), or not at all where a keyframe
    lies between them (a seek). Sampling keyframes alone decodes one frame per sample.
    ``decode_cpu_s`` is this process's CPU time for the batch (decord's threads included),
    spread over its frames: the driver sizes its decoders from it.

    decord's reader keeps decoding ahead on its own thread while its caller waits, and
    holds every frame it decodes (dmlc/decord#157, #208): a reader left open while this
    generator waits on Ray's backpressure would fill memory with full-size frames and
    spend CPU on frames past the segment's end. So each segment is read straight through,
    keeping only resized frames (``S*S*3`` bytes each), and its reader is closed before
    the segment's last batch is handed over. The caller sizes the generator's
    backpressure to a whole shard, which is what bounds memory: about ``shard frames x
    S*S*3`` bytes per running task, whatever the video's length or resolution.
    """
    with _opencv_threads(1):  # the task holds one CPU: OpenCV's pool made each resize cost 1.8x the CPU
        yield STARTED
        yield from _decode_segments(shard, input_size=input_size, batch_size=batch_size, threads=threads)


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


def _decode_segments(shard: Shard, *, input_size: int, batch_size: int, threads: int) -> Iterator[DecodedBatch]:
    """:func:`decode_shard`'s batches, segment by segment."""
    for seg in shard.segments:
        _inject_fault(seg.path)
        try:
            video = open_video(seg.path, threads=threads)
            frames = np.asarray(seg.frames, dtype=np.int64)
            stream = video.read(frames)
            image = None
            pending: DecodedBatch | None = None  # a finished batch is handed over once the next one is read
            clock = time.process_time()
            for start in range(0, len(frames), batch_size):
                idx = frames[start : start + batch_size]
                small = np.empty((len(idx), input_size, input_size, 3), np.uint8)
                for j in range(len(idx)):
                    image = next(stream)
                    small[j] = resize_rgb(image, input_size)
                stamps = video.timestamps(idx)
                n = len(idx)
                now = time.process_time()
                cpu = np.full(n, (now - clock) / n, np.float32)
                if pending is not None:
                    yield pending
                clock = time.process_time()  # the hand-over's own cost is not decoding
                pending = DecodedBatch(
                    video=np.array([seg.video] * n, dtype=object),
                    frame=idx,
                    time_s=stamps,
                    width=np.full(n, image.shape[1], np.int32),
                    height=np.full(n, image.shape[0], np.int32),
                    frames=small,
                    decode_cpu_s=cpu,
                )
        except VideoReadError as exc:  # named by the video's id: the driver records it against the video
            raise DecodeError(f"{seg.video}: {exc.cause}") from None
        del stream, image  # stops decord's read-ahead before the last hand-over
        video.close()
        if pending is not None:
            yield pending
