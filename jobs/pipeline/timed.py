"""Ray tasks whose time limit runs from when each one starts, not from when it was queued.

A task run this way is a streaming task (``num_returns="streaming"``) that yields
:data:`STARTED` as soon as it runs, then its one result. Used by the probes and the int8
calibration reads: thousands of them may queue behind each other, and only a task that is
really running can hang.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

STARTED = "started"  # a timed task's first item: its clock starts here


@dataclass(frozen=True)
class Outcome:
    """How one task ended. ``value``: its result, the exception getting it raised, or None when
    it yielded nothing after :data:`STARTED`; ``ref`` the result's object ref (None unless a
    result came). ``timed_out``: None, ``"task"`` (past ``timeout_s`` from its start) or
    ``"total"`` (past ``total_s`` for all); such a task is cancelled."""

    key: Any
    value: Any = None
    ref: Any = None
    timed_out: str | None = None


def run_timed(
    ray: Any, pending: dict[Any, Any], *, timeout_s: float, total_s: float | None = None, poll_s: float = 0.5
) -> Iterator[Outcome]:
    """Waits for the streaming tasks ``{generator: key}`` (consumed), yielding one
    :class:`Outcome` per task as it ends, in the order they end."""
    started: dict[Any, float] = {}
    deadline = None if total_s is None else time.monotonic() + total_s
    while pending:
        gens = list(pending)
        ray.wait(gens, num_returns=1, timeout=poll_s, fetch_local=False)
        ready = set(ray.wait(gens, num_returns=len(gens), timeout=0, fetch_local=False)[0])
        now = time.monotonic()
        for gen, key in list(pending.items()):
            if gen in ready:
                ref = None
                try:
                    ref = next(gen)
                    value = ray.get(ref)
                except StopIteration:
                    value = None
                except Exception as exc:  # a Ray error: the task crashed or raised; the caller words it
                    ref, value = None, exc
                if isinstance(value, str) and value == STARTED:
                    started[gen] = now
                    continue
                del pending[gen]
                yield Outcome(key, value, ref)
            elif (gen in started and now - started[gen] > timeout_s) or (deadline is not None and now > deadline):
                ray.cancel(gen, force=True)
                del pending[gen]
                yield Outcome(key, timed_out="task" if gen in started else "total")
