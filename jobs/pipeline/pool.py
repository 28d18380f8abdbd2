"""The detector actors as a pool: least-loaded dispatch, a bounded number of calls in flight,
and a dead or hung actor replaced.

Ray does not restart these actors (``max_restarts=0``): when one dies (its process killed,
or out of memory) the pool starts a fresh one in its place, and the calls that were queued
on the dead one are forgotten here so that their shards fail and are retried whole by the
driver; no frame is lost or doubled.

An actor that hangs (alive, but its call never returns) looks idle to Ray and least loaded
to nobody: its calls just stay in flight. An actor runs its calls in order, so one that
has calls in flight and has finished none for ``hang_timeout_s`` (counted from when it is
ready: model loaded and int8 calibrated) is hung, not busy: :meth:`ActorPool.check` kills
it, starts a replacement and sends its batches again. The call it was running gets a
strike; a batch that hangs a second actor is not sent again (its shard fails and is retried
whole by the scheduler, a bounded number of times).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any


logger = logging.getLogger(__name__)

MAX_HANGS = 2  # actors a batch may hang before it is no longer sent again


class ActorPool:
    """Detector actors (Ray actor handles of :class:`jobs.pipeline.actor.DetectorActor`) and
    the calls in flight on each."""

    def __init__(
        self, ray: Any, *, make_actor: Callable[[], Any], size: int, inflight_per_actor: int,
        hang_timeout_s: float | None = None,
    ) -> None:
        """Starts ``size`` actors with ``make_actor``; each gets at most ``inflight_per_actor``
        batches at a time. ``hang_timeout_s``: see the module docstring (None: never)."""
        self.ray = ray
        self.make_actor = make_actor
        self.inflight_per_actor = inflight_per_actor
        self.hang_timeout_s = hang_timeout_s
        self.actors: list[Any] = []
        self.pings: list[Any] = []  # an actor's ping call until it has answered (None: ready)
        self.quiet_since: list[float] = []  # when it last finished a call, became ready or busy
        for _ in range(size):
            self._start(len(self.actors))
        self.load = [0] * size  # calls in flight per actor
        self.actor_of: dict[Any, int] = {}  # result ref -> index of the actor it runs on (-1: replaced)
        self.batch_of: dict[Any, Any] = {}  # result ref -> the batch ref it was called with
        self.strikes: dict[Any, int] = {}  # batch ref -> actors it was running on when they hung

    def _start(self, i: int) -> None:
        """Starts actor ``i`` (a new slot when ``i`` is the pool's size) and asks when it is ready."""
        if i == len(self.actors):
            self.actors.append(None)
            self.pings.append(None)
            self.quiet_since.append(0.0)
        actor = self.make_actor()
        self.actors[i], self.pings[i], self.quiet_since[i] = actor, actor.ping.remote(), time.monotonic()

    def grow(self, size: int) -> None:
        """Starts actors until the pool has ``size`` (a pool is never shrunk mid-job). A new
        actor gets batches once it is ready (:meth:`submit`), so one that waits for a
        node to have room holds none up."""
        while len(self.actors) < size:
            self._start(len(self.actors))
            self.load.append(0)
        logger.info("detector actors: %d", len(self.actors))

    def restart_clocks(self) -> None:
        """Work was queued on every actor ahead of the batches (int8 calibration): hang clocks
        start again once each has done it."""
        self.pings = [actor.ping.remote() for actor in self.actors]

    def capacity(self) -> int:
        """How many more batches may be dispatched now (to the actors :meth:`submit` uses)."""
        return sum(self.inflight_per_actor - self.load[i] for i in self._candidates())

    def _candidates(self) -> list[int]:
        """The actors batches go to: the ready ones, or every one while none is ready yet."""
        self._poll_pings()
        ready = [i for i, p in enumerate(self.pings) if p is None]
        return ready or list(range(len(self.actors)))

    def submit(self, batch_ref: Any) -> Any:
        """Sends a decoded batch to the least-loaded ready actor (to the least-loaded one
        while none is ready yet: the job's first actors); returns the call's result ref."""
        i = min(self._candidates(), key=lambda j: self.load[j])
        result = self.actors[i].__call__.remote(batch_ref)
        if self.load[i] == 0:
            self.quiet_since[i] = time.monotonic()
        self.load[i] += 1
        self.actor_of[result] = i
        self.batch_of[result] = batch_ref
        return result

    def release(self, ref: Any) -> int:
        """Forgets a finished call; returns the index of the actor it ran on (-1: replaced)."""
        i = self.actor_of.pop(ref, -1)
        batch = self.batch_of.pop(ref, None)
        self.strikes.pop(batch, None)
        if i >= 0:
            self.load[i] -= 1
            self.quiet_since[i] = time.monotonic()
        return i

    def replace(self, i: int) -> None:
        """Actor ``i`` died (its process was killed, or OOM): start a fresh one."""
        logger.warning("detector actor %d died; starting a replacement", i)
        self.ray.kill(self.actors[i])
        self._start(i)
        for ref, j in list(self.actor_of.items()):
            if j == i:  # calls queued on the dead actor fail too; their shards retry
                self.actor_of[ref] = -1
        self.load[i] = 0

    def check(self, now: float | None = None) -> dict[Any, Any]:
        """Replaces every hung actor (see the module docstring) and sends its batches again.
        Returns ``{old result ref: new result ref}`` for the batches sent again, and ``{old:
        None}`` for a batch that hung too many actors (fail its shard)."""
        if self.hang_timeout_s is None:
            return {}
        now = time.monotonic() if now is None else now
        self._poll_pings(now)
        moved: dict[Any, Any] = {}
        for i in range(len(self.actors)):
            if self.pings[i] is None and self.load[i] > 0 and now - self.quiet_since[i] > self.hang_timeout_s:
                moved.update(self._replace_hung(i))
        return moved

    def _poll_pings(self, now: float | None = None) -> None:
        """Marks ready each actor whose ping has answered (its model loaded)."""
        waiting = [p for p in self.pings if p is not None]
        if not waiting:
            return
        now = time.monotonic() if now is None else now
        answered = self.ray.wait(waiting, num_returns=len(waiting), timeout=0, fetch_local=False)[0]
        for i, ping in enumerate(self.pings):
            if ping is not None and ping in answered:
                self.pings[i] = None
                self.quiet_since[i] = max(self.quiet_since[i], now)

    def _replace_hung(self, i: int) -> dict[Any, Any]:
        refs = [ref for ref, j in self.actor_of.items() if j == i]  # in call order: the first one ran
        logger.warning(
            "detector actor %d finished nothing for %g s with %d batches in flight: hung; replacing it",
            i, self.hang_timeout_s, len(refs),
        )
        self.ray.kill(self.actors[i])
        self._start(i)
        self.load[i] = 0
        batches = [(ref, self.batch_of.pop(ref)) for ref in refs]
        for ref in refs:
            del self.actor_of[ref]
        if batches:
            first = batches[0][1]
            self.strikes[first] = self.strikes.get(first, 0) + 1
        moved: dict[Any, Any] = {}
        for ref, batch in batches:
            if self.strikes.get(batch, 0) >= MAX_HANGS:
                self.strikes.pop(batch)
                moved[ref] = None
            else:
                moved[ref] = self.submit(batch)
        return moved

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
