"""Job-level errors; the family's base lives in :mod:`detector.errors`."""

from __future__ import annotations

from detector.errors import ImageReadError, InputError, MaskjobsError, WeightsError, one_line

__all__ = [
    "one_line", "ClusterError", "ConfigError", "ImageReadError", "InputError", "JobFailedError", "MaskjobsError",
    "WeightsError",
]


class ConfigError(InputError):
    """A bad config value or flag: exit code 2."""


class ClusterError(InputError):
    """The Ray cluster cannot be reached, refuses us, or has no such job: exit code 2."""


class JobFailedError(MaskjobsError):
    """The job ran but some inputs failed: exit code 1."""

    exit_code = 1
