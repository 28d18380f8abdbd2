"""Finding the job's videos and naming them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobs.errors import InputError
from jobs.media import VIDEO_EXTENSIONS


@dataclass(frozen=True)
class VideoInput:
    """A video to process. ``video`` is its id: the path relative to the input directory it
    was found in, or its file name when it was given directly."""

    video: str
    path: str


def discover(inputs: list[str]) -> list[VideoInput]:
    """Video files under ``inputs`` (files, or directories searched recursively), sorted by id.

    A file given directly is taken whatever its extension; directories contribute files
    with the usual video extensions. Raises :class:`InputError` for a missing input, no
    video at all, or two videos with the same id.
    """
    found: dict[str, VideoInput] = {}
    for given in inputs:
        root = Path(given)
        if not root.exists():
            raise InputError(f"{given}: no such file or directory")
        if root.is_dir():
            candidates = [
                (p.relative_to(root).as_posix(), p)
                for p in sorted(root.rglob("*"))
                if p.suffix.lower() in VIDEO_EXTENSIONS and (p.is_file() or p.is_fifo())
            ]
        else:
            candidates = [(root.name, root)]
        for vid, path in candidates:
            item = VideoInput(vid, str(path.absolute()))
            if vid in found and found[vid].path != item.path:
                raise InputError(f"{path}: two inputs have the same video id {vid!r} ({found[vid].path})")
            found[vid] = item
    if not found:
        raise InputError(f"no video files found in {', '.join(inputs)}")
    return [found[k] for k in sorted(found)]
