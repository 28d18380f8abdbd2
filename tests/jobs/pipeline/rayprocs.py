"""The Ray processes this test process started, to check that an embedded Ray stops clean."""

from __future__ import annotations

import os
import time

from jobs.pipeline.watchdog import descendants


def ray_processes() -> list[str]:
    """Command lines of this test process's Ray descendants (other fixtures may run servers of their own)."""
    out = []
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                line = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ray" in line or "jobs.pipeline.watchdog" in line:
            out.append(line)
    return out


def none_left(timeout: float = 20) -> bool:
    """Waits up to ``timeout`` s for every Ray descendant to exit; True when none is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and ray_processes():
        time.sleep(0.2)
    return not ray_processes()
