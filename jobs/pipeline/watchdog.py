"""Reaps an embedded Ray's processes if the driver dies without shutting it down (SIGKILL).

Ray ties its raylet and GCS to the driver, but helper processes (agents, workers) can
linger for a minute after a hard kill. This watchdog runs as its own small process:
it polls the driver's process tree and, once the driver is gone, SIGKILLs

- the descendants it last saw (each checked against its start time, so a reused PID is safe),
- and every process of this user whose environment carries the session's mark
  (``MASKJOBS_RAY_OWNER=<token>``, set by the driver before Ray starts, so the raylet, its
  agents and workers inherit it). This finds what started between two polls and was
  orphaned when its parent died with the driver: a parent's death re-parents its
  children, so the process tree alone cannot.

Linux only (it reads /proc); elsewhere it is not started.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

_POLL_S = 0.5
MARK = "MASKJOBS_RAY_OWNER"
_SWEEPS = 5  # rounds of killing once the driver is gone (a dying parent may have just forked)


def stat(pid: int) -> tuple[int, int] | None:
    """``(ppid, start_time)`` of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """``{pid: start_time}`` of every live descendant of ``root``."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = stat(int(entry))
            if st is not None:
                children.setdefault(st[0], []).append(int(entry))
                starts[int(entry)] = st[1]
    out: dict[int, int] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if pid in starts and pid != os.getpid():
            out[pid] = starts[pid]
            stack.extend(children.get(pid, []))
    return out


def marked(token: str) -> dict[int, int]:
    """``{pid: start_time}`` of every process whose environment holds ``MARK=token`` (only
    this user's processes are readable; this process is left out)."""
    needle = f"{MARK}={token}".encode()
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            st = stat(int(entry))
            if st is not None:
                out[int(entry)] = st[1]
    return out


def _kill(procs: dict[int, int]) -> int:
    """SIGKILLs each process still the one seen (same start time); returns how many."""
    killed = 0
    for pid, start in procs.items():
        st = stat(pid)
        if st is not None and st[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def watch(driver: int, token: str) -> None:
    """Blocks until ``driver`` exits, then kills what was left of its process tree and every
    process marked with ``token``."""
    seen: dict[int, int] = {}
    while stat(driver) is not None:
        seen.update(descendants(driver))
        seen = {pid: start for pid, start in seen.items() if (stat(pid) or (0, -1))[1] == start}
        time.sleep(_POLL_S)
    _kill(seen)
    for _ in range(_SWEEPS):
        if not _kill(marked(token)):
            break
        time.sleep(0.1)


def start_watchdog(token: str) -> subprocess.Popen | None:
    """Starts a watchdog over this process, which kills what it started and what carries
    ``MARK=token`` in its environment once it dies; None where /proc is not available."""
    if not Path("/proc/self/stat").exists():
        return None
    env = {k: v for k, v in os.environ.items() if k != MARK}  # the watchdog is not one of its own targets
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.pipeline.watchdog", str(os.getpid()), token],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env=env,
    )


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
