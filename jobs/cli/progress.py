"""Progress of a run: a live bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """Frames done of total, frames per second and ETA."""

    def __init__(self, stream: TextIO | None = None, *, interval_s: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self.total = 0
        self.done = 0
        self.t0 = time.monotonic()
        self._last = self.t0
        self._bar: Any = None
        self._task: Any = None

    def start(self, total: int) -> None:
        self.total = total
        self.t0 = self._last = time.monotonic()
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self._bar = Bar(
                TextColumn("frames"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[fps]:.1f} fps"), TimeRemainingColumn(),
                console=Console(file=self.stream), transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("frames", total=total, fps=0.0)

    def advance(self, frames: int) -> None:
        self.done += frames
        now = time.monotonic()
        fps = self.done / max(now - self.t0, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, fps=fps)
        elif now - self._last >= self.interval_s:
            self._last = now
            eta = (self.total - self.done) / fps if fps > 0 else float("inf")
            self.stream.write(f"progress: {self.done}/{self.total} frames, {fps:.1f} fps, ETA {eta:.0f} s\n")
            self.stream.flush()

    def close(self) -> float:
        """Stops the bar; returns the overall frames per second."""
        if self._bar is not None:
            self._bar.stop()
        return self.done / max(time.monotonic() - self.t0, 1e-9)
