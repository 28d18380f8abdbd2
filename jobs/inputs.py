"""Finding the job's videos and naming them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobs.errors import InputError
from jobs.media import VIDEO_EXTENSIONS
from jobs.remote import is_remote, list_videos, local_path
from sinks.location import display_location


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
        if is_remote(given):  # object storage or HTTP: listed there, read where decoded (jobs.remote)
            for vid, uri in list_videos(given):
                _add(found, VideoInput(vid, uri), display_location(uri))
            continue
        root = Path(local_path(given))
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
            _add(found, VideoInput(vid, str(path.absolute())), str(path))
    if not found:
        raise InputError(f"no video files found in {', '.join(display_location(i) for i in inputs)}")
    return [found[k] for k in sorted(found)]


def _add(found: dict[str, VideoInput], item: VideoInput, shown: str) -> None:
    if item.video in found and found[item.video].path != item.path:
        other = display_location(found[item.video].path)
        raise InputError(f"{shown}: two inputs have the same video id {item.video!r} ({other})")
    found[item.video] = item
