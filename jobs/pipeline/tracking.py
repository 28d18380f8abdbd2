"""Tracking while the job runs: each committed shard's detections go to its video's tracker.

The tracks pass after the run (:mod:`jobs.results.tracks`) reads every video's committed rows
back and tracks them in frame order, on the driver, one video after the other: ~0.3 ms a
sampled frame, 5 s for 7.5 minutes of two videos at every frame, while the CPUs wait. The
tracker is online (:class:`~jobs.results.bytetrack.ByteTracker` takes one frame at a time), so
the driver can feed it during the run instead, as shards commit, on a thread of its own (the
driver's loop mostly waits on Ray).

A shard can commit before an earlier one of the same video: its detections wait until the
frames before them have been fed. What the run's tracker saw is used only where it is exactly
what the pass reads back (the same frames, counts, boxes and scores, in the same order): the
tracker then gives the same ids by construction. Anything else (a resumed job whose earlier
rows this run never saw, a shard that failed, a thread error) falls back to tracking the rows
read back, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from jobs.pipeline.commit import concat_detections
from jobs.pipeline.records import DetectedBatch
from jobs.results.bytetrack import ByteTracker
from jobs.results.render import VideoDetections

if TYPE_CHECKING:
    from jobs.pipeline.plan import Shard

logger = logging.getLogger(__name__)


@dataclass
class _Video:
    """One video's tracker and what it has been fed."""

    planned: np.ndarray  # (N,) int64 ascending: the sampled frames this run commits, in feeding order
    tracker: ByteTracker
    fed: int = 0  # frames of ``planned`` fed so far
    waiting: dict[int, tuple[np.ndarray, ...]] = field(default_factory=dict)  # first frame -> chunk
    chunks: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # (frames, counts, boxes, scores, numbers)
    broken: bool = False


class OnlineTracks:
    """Per-video trackers fed with committed detections (:meth:`add`) on one worker thread;
    :meth:`ids` gives a video's final track ids when they are valid for its rows read back.

    Args:
        planned: ``{video: frames}``, the sampled frames each video's shards commit this run.
        params: keyword arguments of :class:`ByteTracker` (the job's ``tracking`` config).
    """

    def __init__(self, planned: dict[str, Sequence[int] | np.ndarray], params: dict[str, Any]) -> None:
        self._videos = {v: _Video(np.unique(np.asarray(f, np.int64)), ByteTracker(**params)) for v, f in planned.items()}
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        self.used: list[str] = []  # videos whose ids :meth:`ids` gave

    @classmethod
    def for_shards(cls, shards: Iterable[Shard], params: dict[str, Any]) -> OnlineTracks:
        """Trackers for the videos of the job's ``shards``."""
        planned: dict[str, list[np.ndarray]] = {}
        for shard in shards:
            for seg in shard.segments:
                planned.setdefault(seg.video, []).append(np.asarray(seg.frames, np.int64))
        return cls({v: np.concatenate(f) for v, f in planned.items()}, params)

    def add(self, parts: list[DetectedBatch]) -> None:
        """A committed shard's batches (as :func:`jobs.pipeline.commit.commit_shard` took them):
        fed on the worker thread; returns at once."""
        if not self._videos:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskjobs-tracks")
        self._pending.append(self._pool.submit(self._feed, parts))

    def ids(self, video: str, dets: VideoDetections) -> np.ndarray | None:
        """``video``'s final track ids (as :func:`jobs.results.bytetrack.track_sequence` gives
        for ``dets``), or None where its tracker did not see exactly ``dets``' rows."""
        self._drain()
        state = self._videos.get(video)
        if state is None or state.broken or not state.chunks:
            return None
        frames, counts, boxes, scores, numbers = (np.concatenate(c) for c in zip(*state.chunks))
        same = (
            np.array_equal(frames, dets.frames) and np.array_equal(counts, dets.counts)
            and np.array_equal(boxes, dets.boxes) and np.array_equal(scores, dets.scores)
        )
        if not same:
            logger.debug("%s: tracked again after the run (its rows are not what the run's tracker saw)", video)
            return None
        self.used.append(video)
        return state.tracker.final_ids(numbers)

    def close(self) -> None:
        """Stops the worker thread (what it was given is finished first)."""
        self._drain()

    def _drain(self) -> None:
        for future in self._pending:
            future.result()  # _feed catches its own errors
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _feed(self, parts: list[DetectedBatch]) -> None:
        videos: set[str] = set()
        try:
            cat = concat_detections(parts)
            videos = {str(v) for v in np.unique(cat["video"])}
            counts = np.asarray(cat["counts"], np.int64)
            per_det = np.repeat(np.arange(len(counts)), counts)
            for video in videos:
                state = self._videos.get(video)
                if state is None or state.broken:
                    continue
                rows = cat["video"] == video
                dets = rows[per_det]
                frames = np.asarray(cat["frame"], np.int64)[rows]
                if len(frames):  # as the sink stores them: float32 (see sinks.schema.frames_table)
                    state.waiting[int(frames[0])] = (
                        frames, counts[rows], np.asarray(cat["boxes"], np.float32)[dets].astype(np.float64),
                        np.asarray(cat["scores"], np.float32)[dets].astype(np.float64),
                    )
                self._advance(state)
        except Exception as exc:  # a bug here must not cost the job: the pass after the run tracks these videos
            logger.warning("tracking during the run stopped for %s (%s); tracked after the run instead",
                           sorted(videos) or "a shard", exc)
            for video in videos:
                if video in self._videos:
                    self._videos[video].broken = True

    def _advance(self, state: _Video) -> None:
        """Feeds ``state``'s waiting chunks that continue where its tracker stopped."""
        while state.fed < len(state.planned) and (chunk := state.waiting.pop(int(state.planned[state.fed]), None)):
            frames, counts, boxes, scores = chunk
            if not np.array_equal(frames, state.planned[state.fed : state.fed + len(frames)]):
                state.broken = True  # not the planned frames (a shard cut short): the pass tracks this video
                return
            state.chunks.append((frames, counts, boxes, scores, state.tracker.update_frames(counts, boxes, scores)))
            state.fed += len(frames)
