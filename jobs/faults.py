"""Test-only fault injection for the parts a decode-level fault cannot reach.

``$MASKJOBS_TEST_FAULT`` (unset in normal use) holds, comma-separated:

- ``crash:<text>`` / ``hang:<text>``: decoding a segment of a file whose path contains ``<text>``
  kills its worker / never returns (failure isolation with real process crashes and hangs);
- ``calib-crash:<text>`` / ``calib-hang:<text>``: reading int8 calibration frames of a file
  whose path contains ``<text>`` kills its worker / never returns;
- ``track-error:<text>``: tracking a video whose id contains ``<text>`` raises (a tracker bug);
- ``render-hang:<text>``: rendering (thumbnails, ``--annotate``) a file whose path contains
  ``<text>`` never returns;
- ``detector-hang:<flag file>``: the first detector call that creates ``<flag file>``
  never returns (one hung actor per job: its replacement, finding the file, works);
- ``detector-sleep:<seconds>``: every detector call takes that much longer (a busy detector).

Each is a no-op unless named, so these hooks cost one environment lookup.
"""

from __future__ import annotations

import os
import time

FAULT_ENV = "MASKJOBS_TEST_FAULT"


def _entries(kind: str) -> list[str]:
    out = []
    for spec in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        name, _, arg = spec.partition(":")
        if name == kind and arg:
            out.append(arg)
    return out


def _hang() -> None:
    while True:
        time.sleep(3600)


def at_path(where: str, path: str) -> None:
    """``where`` is ``calib``, ``render`` or ``""`` (decoding): crashes or hangs here if asked
    for ``path``."""
    prefix = f"{where}-" if where else ""
    if any(text in path for text in _entries(f"{prefix}crash")):
        os._exit(134)
    if any(text in path for text in _entries(f"{prefix}hang")):
        _hang()


def in_decode(path: str) -> None:
    """Crashes or hangs a decode task on ``path`` if asked (see the module docstring)."""
    at_path("", path)


def in_tracking(video: str) -> None:
    """Raises while tracking ``video`` if asked (see the module docstring)."""
    if any(text in video for text in _entries("track-error")):
        raise RuntimeError(f"injected tracker error on {video}")


def in_detector() -> None:
    """Sleeps or hangs a detector call if asked (see the module docstring)."""
    for seconds in _entries("detector-sleep"):
        time.sleep(float(seconds))
    for flag in _entries("detector-hang"):
        try:
            os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        _hang()
