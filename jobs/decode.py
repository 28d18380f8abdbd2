"""Decoding shards inside Ray workers: sampled frames, resized for the model, in batches."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from detector.preprocess import resize_rgb
from jobs.errors import first_line
from jobs.plan import Shard

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


def decode_shard(shard: Shard, *, input_size: int, batch_size: int, threads: int = 1) -> Iterator[dict[str, Any]]:
    """Yields ``STARTED`` once the task runs, then batches ``{video (B,), frame (B,),
    time_s (B,), width (B,), height (B,), frames (B, S, S, 3) uint8 RGB}`` for the shard's
    sampled frames, in order."""
    import decord

    yield STARTED

    for seg in shard.segments:
        _inject_fault(seg.path)
        try:
            reader = decord.VideoReader(seg.path, ctx=decord.cpu(0), num_threads=threads)
        except (decord.DECORDError, RuntimeError) as exc:
            raise DecodeError(f"{seg.video}: cannot open the video ({first_line(exc)})") from None
        frames = np.asarray(seg.frames, dtype=np.int64)
        for start in range(0, len(frames), batch_size):
            idx = frames[start : start + batch_size]
            try:
                images = reader.get_batch(idx.tolist()).asnumpy()
                stamps = reader.get_frame_timestamp(idx.tolist())[:, 0]
            except (decord.DECORDError, RuntimeError, IndexError) as exc:
                raise DecodeError(f"{seg.video}: decoding failed at frame {int(idx[0])} ({first_line(exc)})") from None
            height, width = images.shape[1:3]
            small = np.stack([resize_rgb(im, input_size) for im in images])
            n = len(idx)
            yield {
                "video": np.array([seg.video] * n, dtype=object),
                "frame": idx,
                "time_s": np.asarray(stamps, dtype=np.float64),
                "width": np.full(n, width, np.int32),
                "height": np.full(n, height, np.int32),
                "frames": small,
            }
        del reader

