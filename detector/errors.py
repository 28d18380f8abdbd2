"""The exception family of maskjobs.

Every error a user can cause (a bad file, a bad flag) is a :class:`MaskjobsError`
with a one-line message that names the file and the cause. The CLI turns the
family into exit codes at its boundary; library code never exits the process.
"""

from __future__ import annotations


class MaskjobsError(Exception):
    """Base of all expected, user-facing errors. ``exit_code`` is what the CLI returns."""

    exit_code: int = 2


class InputError(MaskjobsError):
    """Bad usage or unreadable input: exit code 2."""


class WeightsError(InputError):
    """A weight file that is missing, truncated, corrupt or does not fit the model."""

    def __init__(self, path: object, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class ImageReadError(InputError):
    """A picture or video that cannot be read."""

    def __init__(self, path: object, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")
