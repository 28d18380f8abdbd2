"""Which weight file a command uses: ``--weights``, else ``MASKJOBS_WEIGHTS``, else the cache."""

from __future__ import annotations

import os
from pathlib import Path

from jobs.errors import InputError

ENV_VAR = "MASKJOBS_WEIGHTS"
_CACHED_NAMES = ("face_mask_detection.safetensors", "face_mask_detection.caffemodel", "face_mask_detection.pth")


def cache_dir() -> Path:
    """The user cache: ``$MASKJOBS_CACHE``, else ``$XDG_CACHE_HOME/maskjobs``, else ``~/.cache/maskjobs``."""
    if os.environ.get("MASKJOBS_CACHE"):
        return Path(os.environ["MASKJOBS_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "maskjobs"


def resolve_weights(flag: Path | str | None) -> Path:
    """The weight file to load, or a one-line error saying how to provide one."""
    if flag:
        return Path(flag)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    for name in _CACHED_NAMES:
        candidate = cache_dir() / "weights" / name
        if candidate.is_file():
            return candidate
    raise InputError(
        f"no weights: pass --weights FILE, set {ENV_VAR}, or put the AIZOO files in {cache_dir() / 'weights'}"
    )
