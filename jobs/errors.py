"""Job-level errors; the family's base lives in :mod:`detector.errors`."""

from __future__ import annotations

from detector.errors import ImageReadError, InputError, MaskjobsError, WeightsError

__all__ = [
    "first_line", "ClusterError", "ConfigError", "ImageReadError", "InputError", "JobFailedError", "MaskjobsError",
    "WeightsError",
]


class ConfigError(InputError):
    """A bad config value or flag: exit code 2."""


class ClusterError(InputError):
    """The Ray cluster cannot be reached, refuses us, or has no such job: exit code 2."""


class JobFailedError(MaskjobsError):
    """The job ran but some inputs failed: exit code 1."""

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (at most 200 characters)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]
