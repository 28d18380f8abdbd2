"""Ray's private surfaces this package uses, pinned to the Ray versions they were tested on.

Two things here reach past Ray's public API because the public path costs memory or time:

- ``_generator_backpressure_num_objects`` (:class:`StreamingTask`): bounds how many batches
  a decode task's streaming generator runs ahead of the driver.
- The embedded Ray's start-up patches (:func:`jobs.pipeline.session._without_http_api_and_autoscaler`).

Each is used only on a Ray whose ``major.minor`` is in :data:`TESTED_RAY`, and falls back to
the public path on any exception it raises, not only a missing name: a private surface
may change its meaning without changing its name. Either fallback logs one warning.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

TESTED_RAY = ("2.60",)  # Ray releases (major.minor) the private surfaces were tested on

_warned: set[str] = set()  # surfaces that have logged their fallback warning in this process


def ray_version() -> str:
    import ray

    return ray.__version__


def tested(surface: str) -> bool:
    """Whether the running Ray is one ``surface`` was tested on; if not, warns (once) that the
    public path is taken instead."""
    version = ray_version()
    if version.startswith(tuple(f"{v}." for v in TESTED_RAY)):
        return True
    fall_back(surface, f"Ray {version} is not one it was tested on ({', '.join(TESTED_RAY)})")
    return False


def fall_back(surface: str, reason: str | BaseException) -> None:
    """Logs (once per ``surface`` and process) that ``surface`` is not used, and why."""
    if surface in _warned:
        return
    _warned.add(surface)
    if isinstance(reason, BaseException):
        from jobs.errors import one_line

        reason = f"{type(reason).__name__}: {one_line(reason)}"
    logger.warning("%s: not used (%s); taking Ray's public path", surface, reason)


BACKPRESSURE = "Ray's private generator backpressure (_generator_backpressure_num_objects)"


class StreamingTask:
    """``fn`` as a Ray task returning a streaming generator that runs at most ``backpressure``
    items ahead of its reader, where Ray's private option for that works.

    Without it (an untested Ray, or the option refused when set or when a task starts) the
    generator runs ahead freely: a decode task still holds no more than its own shard's
    batches, so memory stays bounded by the shard size, only less tightly.
    """

    def __init__(self, ray: Any, fn: Any, *, backpressure: int, **options: Any) -> None:
        remote = ray.remote(fn)
        self._public = remote.options(num_returns="streaming", **options)
        self._private: Any = None
        if tested(BACKPRESSURE):
            try:
                self._private = remote.options(
                    num_returns="streaming", _generator_backpressure_num_objects=backpressure, **options
                )
            except Exception as exc:  # any refusal: the public path
                fall_back(BACKPRESSURE, exc)

    @property
    def backpressured(self) -> bool:
        """Whether tasks start with the private backpressure option."""
        return self._private is not None

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Starts the task; returns its ``ObjectRefGenerator``."""
        if self._private is not None:
            try:
                return self._private.remote(*args, **kwargs)
            except Exception as exc:  # the option refused at start: this and later tasks go without it
                self._private = None
                fall_back(BACKPRESSURE, exc)
        return self._public.remote(*args, **kwargs)
