"""Decoding shards inside Ray workers: sampled frames, resized for the model, in batches."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from detector.preprocess import resize_rgb
from jobs.errors import one_line
from jobs.pipeline.plan import Shard

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


class _DLPack:
    """Lets numpy view a decord frame through DLPack instead of copying it (``asnumpy``)."""

    __slots__ = ("_nd",)

    def __init__(self, nd: Any) -> None:
        self._nd = nd

    def __dlpack__(self, **_: Any) -> Any:
        return self._nd.to_dlpack()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU


def keyframe_before(keyframes: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """For each of ``frames``, the last of ``keyframes`` (ascending, non-empty) at or before
    it: where decoding it starts. A frame before the first keyframe gets the first."""
    keyframes = np.asarray(keyframes, np.int64)
    return keyframes[np.maximum(np.searchsorted(keyframes, frames, side="right") - 1, 0)]


def read_frames(reader: Any, frames: np.ndarray, keyframes: np.ndarray) -> Iterator[np.ndarray]:
    """Yields the (H, W, 3) uint8 RGB frames at ascending indices ``frames``, decoding forward.

    Frames between two wanted ones are skipped (decoded, not converted to RGB) unless a
    keyframe lies between them, in which case the reader seeks to it. This reads each
    GOP once, where ``get_batch`` seeks and converts per frame: about half the CPU time.
    The yielded array is only valid until the next one is read.
    """
    pos = 0  # the frame the next ``reader.next()`` returns
    for idx in frames.tolist():
        if idx != pos:
            k = int(np.searchsorted(keyframes, idx, side="right")) - 1
            if idx < pos or (k >= 0 and keyframes[k] > pos):
                reader.seek_accurate(idx)
            else:
                reader.skip_frames(idx - pos)
        yield np.from_dlpack(_DLPack(reader.next()))
        pos = idx + 1


def decode_shard(shard: Shard, *, input_size: int, batch_size: int, threads: int = 1) -> Iterator[dict[str, Any]]:
    """Yields ``STARTED`` once the task runs, then batches ``{video (B,), frame (B,),
    time_s (B,), width (B,), height (B,), frames (B, S, S, 3) uint8 RGB}`` for the shard's
    sampled frames, in order.

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


def _decode_segments(shard: Shard, *, input_size: int, batch_size: int, threads: int) -> Iterator[dict[str, Any]]:
    """:func:`decode_shard`'s batches, segment by segment."""
    import decord

    for seg in shard.segments:
        _inject_fault(seg.path)
        try:
            reader = decord.VideoReader(seg.path, ctx=decord.cpu(0), num_threads=threads)
            keyframes = np.asarray(reader.get_key_indices(), dtype=np.int64)
        except (decord.DECORDError, RuntimeError) as exc:
            raise DecodeError(f"{seg.video}: cannot open the video ({one_line(exc)})") from None
        frames = np.asarray(seg.frames, dtype=np.int64)
        stream = read_frames(reader, frames, keyframes)
        image = None
        pending = None  # a finished batch is handed over once the next one is read
        for start in range(0, len(frames), batch_size):
            idx = frames[start : start + batch_size]
            small = np.empty((len(idx), input_size, input_size, 3), np.uint8)
            try:
                for j in range(len(idx)):
                    image = next(stream)
                    small[j] = resize_rgb(image, input_size)
                stamps = reader.get_frame_timestamp(idx.tolist())[:, 0]
            except (decord.DECORDError, RuntimeError, IndexError, StopIteration) as exc:
                raise DecodeError(f"{seg.video}: decoding failed at frame {int(idx[0])} ({one_line(exc)})") from None
            if pending is not None:
                yield pending
            n = len(idx)
            pending = {
                "video": np.array([seg.video] * n, dtype=object),
                "frame": idx,
                "time_s": np.asarray(stamps, dtype=np.float64),
                "width": np.full(n, image.shape[1], np.int32),
                "height": np.full(n, image.shape[0], np.int32),
                "frames": small,
            }
        del stream, reader, image  # stops decord's read-ahead before the last hand-over
        if pending is not None:
            yield pending
