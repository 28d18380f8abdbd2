"""Which shard attempts run, in what order, and what a failure leads to. Pure logic: no Ray.

The driver's loop (:mod:`jobs.pipeline.job`) asks the :class:`Scheduler` which shard to start
next, reports what each running attempt (:class:`ShardRun`) did, and hands a failed one
back. The scheduler decides:

- order: shards start in the order planned (long ones first), retries and split packs
  after everything already queued;
- concurrency: at most ``max_decoders`` attempts decode at once; an attempt whose frames
  are all decoded only waits for detections, so the next one starts decoding meanwhile and
  the detectors never wait at a shard boundary;
- a failed pack of several videos is retried as one shard per video (``split_pack``), so
  one bad video cannot fail the others; a failed single-video shard is retried up to
  ``planning.max_retries`` times, then its video fails with the last error;
- an attempt that has started and whose decoder gave no batch for ``planning.shard_timeout_s``
  while the driver was asking for one fails: its decoder hung or crashed repeatedly. Time
  spent queueing is not a hang: while the detectors are full the driver asks for nothing
  (:meth:`ShardRun.queued`), and an attempt whose frames are all decoded only waits for
  detections (a hung detector is found and replaced by :class:`jobs.pipeline.pool.ActorPool`).

Ray's objects (the decode generator, the result refs) are opaque values here, so all of this
is unit-tested without Ray.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jobs.pipeline.plan import Shard, split_pack
from jobs.pipeline.records import DetectedBatch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardTry:
    """A shard queued to run, and which attempt that is (0: the first)."""

    shard: Shard
    attempt: int = 0


class Verdict(enum.Enum):
    """What :meth:`Scheduler.fail` did with a failed attempt."""

    SPLIT = "split"  # a pack: queued again as one shard per video
    RETRY = "retry"  # queued again as the next attempt
    FAILED = "failed"  # out of retries: its videos failed


@dataclass(eq=False)
class ShardRun:
    """One running attempt at a shard: its decode generator, the detector calls in flight
    and the detections back, numbered in decode order so the shard commits in frame order
    whatever order they return in."""

    shard_try: ShardTry
    gen: Any  # the decode task's streaming generator
    last_progress: float
    next_seq: int = 0  # sequence number of the next batch dispatched
    pending: dict[Any, int] = field(default_factory=dict)  # result ref -> sequence number
    results: dict[int, DetectedBatch] = field(default_factory=dict)
    exhausted: bool = False  # the generator has yielded its last batch
    running: bool = False  # the decode task has started (it yielded its STARTED marker)

    @property
    def shard(self) -> Shard:
        return self.shard_try.shard

    @property
    def attempt(self) -> int:
        return self.shard_try.attempt

    def took(self, now: float) -> bool:
        """An item came out of the decode generator: True for a batch, False for the task's
        STARTED marker (the first item), which only says the task runs."""
        self.last_progress = now
        if self.running:
            return True
        self.running = True
        return False

    def queued(self, now: float) -> None:
        """The driver did not ask for this attempt's next batch (the detectors are full): its
        decoder is waiting, not hanging, so its clock starts again."""
        self.last_progress = now

    def resubmitted(self, old: Any, new: Any) -> None:
        """The call ``old`` was sent again as ``new`` (its detector actor hung)."""
        if old in self.pending:
            self.pending[new] = self.pending.pop(old)

    def dispatched(self, ref: Any) -> None:
        """A batch went to a detector actor; ``ref`` is the call's result."""
        self.pending[ref] = self.next_seq
        self.next_seq += 1

    def received(self, ref: Any, out: DetectedBatch, now: float) -> None:
        """The detections of call ``ref`` are back."""
        self.results[self.pending.pop(ref)] = out
        self.last_progress = now

    @property
    def complete(self) -> bool:
        """Every batch decoded and every one's detections back: the shard can commit."""
        return self.exhausted and not self.pending

    def in_order(self) -> list[DetectedBatch]:
        """The detections of every batch, in decode order (call once :attr:`complete`)."""
        return [self.results[i] for i in range(self.next_seq)]


class Scheduler:
    """The queue of shard attempts, the running ones, and the videos that failed."""

    def __init__(
        self, shards: Iterable[Shard], *, max_retries: int, shard_timeout_s: float, max_decoders: int
    ) -> None:
        self.max_retries = max_retries
        self.shard_timeout_s = shard_timeout_s
        self.max_decoders = max_decoders
        self.queue: deque[ShardTry] = deque(ShardTry(s) for s in shards)
        self.active: dict[str, ShardRun] = {}  # shard id -> its running attempt, in start order
        self.failures: dict[str, str] = {}  # video id -> why it failed (the first error wins)

    def busy(self) -> bool:
        """Something is queued or running."""
        return bool(self.queue or self.active)

    def decoding(self) -> int:
        """Running attempts whose decode task has batches left."""
        return sum(not r.exhausted for r in self.active.values())

    def next_to_start(self) -> ShardTry | None:
        """The next attempt to start, if a decoder is free; start it with :meth:`begin`."""
        if self.queue and self.decoding() < self.max_decoders:
            return self.queue.popleft()
        return None

    def begin(self, shard_try: ShardTry, gen: Any, now: float) -> ShardRun:
        """``shard_try`` started decoding in ``gen``."""
        run = ShardRun(shard_try, gen, last_progress=now)
        self.active[shard_try.shard.shard_id] = run
        return run

    def running(self) -> list[ShardRun]:
        """The running attempts, in the order they started."""
        return list(self.active.values())

    def is_active(self, run: ShardRun) -> bool:
        return run.shard.shard_id in self.active

    def finish(self, run: ShardRun) -> None:
        """``run`` committed."""
        self.active.pop(run.shard.shard_id)

    def stalled(self, run: ShardRun, now: float) -> str | None:
        """Why ``run`` must fail for lack of progress, or None. A queued task's wait for a
        CPU does not count (only an attempt that has started can stall), nor a wait for the
        detectors (see the module docstring): only its decoder's silence does."""
        timeout = self.shard_timeout_s
        if run.running and not run.exhausted and now - run.last_progress > timeout:
            return f"no progress for {timeout:g} s (decoder hung or crashed repeatedly)"
        return None

    def fail(self, run: ShardRun, error: str) -> Verdict:
        """``run`` failed with ``error`` (one line): split it, retry it, or fail its videos.
        The caller cancels its decode task and forgets its detector calls."""
        self.active.pop(run.shard.shard_id, None)
        shard = run.shard
        if len(shard.segments) > 1:
            logger.info("shard %s failed (%s); retrying its videos one by one", shard.shard_id, error)
            self.queue.extend(ShardTry(s) for s in split_pack(shard))
            return Verdict.SPLIT
        if run.attempt < self.max_retries:
            logger.info("shard %s failed (%s); retry %d", shard.shard_id, error, run.attempt + 1)
            self.queue.append(ShardTry(shard, run.attempt + 1))
            return Verdict.RETRY
        for video in shard.videos:
            self.failures.setdefault(video, error)
        return Verdict.FAILED
