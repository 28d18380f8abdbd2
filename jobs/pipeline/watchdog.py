"""Reaps an embedded Ray's processes if the driver dies without shutting it down (SIGKILL).

Ray ties its raylet and GCS to the driver, but helper processes (agents, workers) can
linger for a minute after a hard kill. This watchdog runs as its own small process:
it polls the driver's process tree and, once the driver is gone, SIGKILLs the
descendants it last saw (each checked against its start time, so a reused PID is safe).
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


def watch(driver: int) -> None:
    """Blocks until ``driver`` exits, then kills what was left of its process tree."""
    seen: dict[int, int] = {}
    while stat(driver) is not None:
        seen.update(descendants(driver))
        seen = {pid: start for pid, start in seen.items() if (stat(pid) or (0, -1))[1] == start}
        time.sleep(_POLL_S)
    for pid, start in seen.items():
        st = stat(pid)
        if st is not None and st[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def start_watchdog() -> subprocess.Popen | None:
    """Starts a watchdog over this process; None where /proc is not available."""
    if not Path("/proc/self/stat").exists():
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.pipeline.watchdog", str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


if __name__ == "__main__":
    watch(int(sys.argv[1]))
