"""The exception family of maskjobs.

Every error a user can cause (a bad file, a bad flag) is a :class:`MaskjobsError`
with a one-line message that names the file and the cause. The CLI turns the
family into exit codes at its boundary; library code never exits the process.
"""

from __future__ import annotations

import os
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_utf8(name: str) -> bool:
    """Whether ``name`` encodes as UTF-8: False where it holds a file name's bytes that are not
    UTF-8 (surrogate escapes, as Python decodes such names)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_name(name: str) -> str:
    """A file name as one line of valid UTF-8 text: each byte that is not UTF-8 (a surrogate
    escape, as Python decodes such names) and each control character (a newline in a name)
    becomes ``\\xNN``; any other name is returned as is."""
    if not is_utf8(name):
        name = os.fsencode(name).decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", name)


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
        super().__init__(f"{printable_name(self.path)}: {cause}")


class ImageReadError(InputError):
    """A picture or video that cannot be read."""

    def __init__(self, path: object, cause: str) -> None:
        self.path = str(path)  # as given (it opens the file); the message shows :func:`printable_name`
        self.cause = cause
        super().__init__(f"{printable_name(self.path)}: {cause}")


_TRACEBACK = "Traceback (most recent call last):"
_QUALIFIED = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt): ")


def one_line(error: BaseException | str, *, limit: int = 200) -> str:
    """The one line of an error that says what went wrong, for messages of the form "FILE: cause (LINE)".

    Follows ``cause`` (how Ray wraps a task's exception) to the innermost error. A message that
    carries a traceback (a Ray task error printed whole), and Ray's own errors (a dead actor:
    "The actor died unexpectedly ..." then its details, then why), end with the line that says
    what happened, so that line is taken; any other message gives its first non-empty line. A leading qualified
    exception name (``jobs.pipeline.decode.DecodeError: ``) is dropped. At most ``limit``
    characters; an empty message gives the exception's type name.
    """
    seen: set[int] = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None)
        if not isinstance(cause, BaseException):
            break
        error = cause
    text = error if isinstance(error, str) else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "no message" if isinstance(error, str) else type(error).__name__
    last = any(line.startswith(_TRACEBACK) for line in lines) or _from_ray(error)
    line = lines[-1] if last else lines[0]
    return _QUALIFIED.sub("", line, count=1)[:limit]


def _from_ray(error: BaseException | str) -> bool:
    return not isinstance(error, str) and type(error).__module__.split(".")[0] == "ray"
