"""The watchdog that reaps an embedded Ray after its driver is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.pipeline.watchdog import MARK, stat

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the watchdog reads /proc (Linux only)")

_DRIVER = """
import os, subprocess, sys, time
from jobs.pipeline.watchdog import MARK, start_watchdog
token, here = sys.argv[1], sys.argv[2]
start_watchdog(token)
os.environ[MARK] = token
# Orphans from the start: their shell exits at once, so the driver's process tree never holds them
# (what an agent started between two polls becomes once its raylet dies with the driver).
subprocess.run(["sh", "-c", f"sleep 300 & echo $! > {here}/marked.pid"], check=True)
plain = {k: v for k, v in os.environ.items() if k != MARK}
subprocess.run(["sh", "-c", f"sleep 300 & echo $! > {here}/plain.pid"], check=True, env=plain)
child = subprocess.Popen(["sleep", "300"], env=plain)  # a descendant without the mark
open(f"{here}/child.pid", "w").write(str(child.pid))
print("ready", flush=True)
time.sleep(300)
"""


def _alive(pid: int, start: int) -> bool:
    return (stat(pid) or (0, -1))[1] == start


def test_a_killed_driver_takes_its_marked_orphans_and_its_tree_and_nothing_else(tmp_path: Path) -> None:
    token = f"test-{os.getpid()}-{time.monotonic_ns()}"
    env = {k: v for k, v in os.environ.items() if k != MARK}
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, token, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, env=env)
    assert driver.stdout is not None and driver.stdout.readline().strip() == "ready"
    procs = {name: int((tmp_path / f"{name}.pid").read_text()) for name in ("marked", "plain", "child")}
    starts = {name: stat(pid)[1] for name, pid in procs.items()}  # type: ignore[index]
    assert stat(procs["marked"])[0] != driver.pid  # type: ignore[index]  # an orphan, not in the driver's tree
    time.sleep(1.0)  # the watchdog has polled the tree at least once
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (_alive(procs["marked"], starts["marked"])
                                               or _alive(procs["child"], starts["child"])):
            time.sleep(0.1)
        assert not _alive(procs["marked"], starts["marked"]), "a process with the session's mark outlived the driver"
        assert not _alive(procs["child"], starts["child"]), "a descendant outlived the driver"
        assert _alive(procs["plain"], starts["plain"]), "an unmarked process outside the tree was killed"
    finally:
        for name, pid in procs.items():
            if _alive(pid, starts[name]):
                os.kill(pid, signal.SIGKILL)
