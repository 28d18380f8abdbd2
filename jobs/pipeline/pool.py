"""The detector actors as a pool: least-loaded dispatch, a bounded number of calls in flight,
and a dead actor replaced.

Ray does not restart these actors (``max_restarts=0``): when one dies (its process killed,
or out of memory) the pool starts a fresh one in its place, and the calls that were queued
on the dead one are forgotten here so that their shards fail and are retried whole by the
driver; no frame is lost or doubled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class ActorPool:
    """Detector actors (Ray actor handles of :class:`jobs.pipeline.actor.DetectorActor`) and
    the calls in flight on each."""

    def __init__(self, ray: Any, *, make_actor: Callable[[], Any], size: int, inflight_per_actor: int) -> None:
        """Starts ``size`` actors with ``make_actor``; each gets at most ``inflight_per_actor``
        batches at a time."""
        self.ray = ray
        self.make_actor = make_actor
        self.inflight_per_actor = inflight_per_actor
        self.actors: list[Any] = [make_actor() for _ in range(size)]
        self.load = [0] * size  # calls in flight per actor
        self.actor_of: dict[Any, int] = {}  # result ref -> index of the actor it runs on (-1: replaced)

    def capacity(self) -> int:
        """How many more batches may be dispatched now."""
        return len(self.actors) * self.inflight_per_actor - sum(self.load)

    def submit(self, batch_ref: Any) -> Any:
        """Sends a decoded batch to the least-loaded actor; returns the call's result ref."""
        i = int(np.argmin(self.load))
        result = self.actors[i].__call__.remote(batch_ref)
        self.load[i] += 1
        self.actor_of[result] = i
        return result

    def release(self, ref: Any) -> int:
        """Forgets a finished call; returns the index of the actor it ran on (-1: replaced)."""
        i = self.actor_of.pop(ref, -1)
        if i >= 0:
            self.load[i] -= 1
        return i

    def replace(self, i: int) -> None:
        """Actor ``i`` died (its process was killed, or OOM): start a fresh one."""
        logger.warning("detector actor %d died; starting a replacement", i)
        self.ray.kill(self.actors[i])
        self.actors[i] = self.make_actor()
        for ref, j in list(self.actor_of.items()):
            if j == i:  # calls queued on the dead actor fail too; their shards retry
                self.actor_of[ref] = -1
        self.load[i] = 0

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
