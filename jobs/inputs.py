"""Finding the job's videos and naming them.

A video's id is unique and stable, whatever way its folder was spelt:

- with one input folder, its path relative to that folder (``cams/north/a.mp4``);
- with one input file, its file name;
- with several inputs, its path relative to the folder that holds them all
  (``run cams1/ cams2/`` gives ``cams1/a.mp4`` and ``cams2/a.mp4``).

Inputs are resolved to their real paths first, so ``vids`` and ``vids/../vids`` are the same
input, a folder inside another input folder adds nothing, and a file reached twice (``run vids/
vids/sub/a.mp4``) is one video, named as found under the outermost folder. Ids and the paths
written to the output are text: a byte of a file name that is not UTF-8 (``caf\\xe9.mp4`` from a
Latin-1 NAS) is written as ``\\xNN`` (:func:`escape_name`), while the file is opened by its real
name. AppleDouble files (``._name``, macOS metadata beside a video on a foreign volume) are not
videos; folders given in ``exclude`` (the job's own output) are never searched; a folder that
cannot be read is reported in one line (a warning) and the rest is searched.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from detector.errors import printable_name
from jobs.errors import InputError
from jobs.media import VIDEO_EXTENSIONS
from jobs.remote import is_remote, list_videos, local_path
from sinks.location import display_location

logger = logging.getLogger(__name__)

APPLEDOUBLE_PREFIX = "._"


@dataclass(frozen=True)
class VideoInput:
    """A video to process. ``video`` is its id (see the module's docstring); ``path`` the
    absolute path to open it by (it may hold undecodable bytes as surrogates: use
    :func:`escape_name` to show it)."""

    video: str
    path: str


def escape_name(name: str) -> str:
    """``name`` as one line of valid UTF-8 text (:func:`detector.errors.printable_name`): bytes
    that are not UTF-8 and control characters (a newline) become ``\\xNN``."""
    return printable_name(name)


def _is_video_name(name: str) -> bool:
    return not name.startswith(APPLEDOUBLE_PREFIX) and Path(name).suffix.lower() in VIDEO_EXTENSIONS


def _walk(root: str, excluded: set[str]) -> list[str]:
    """Real-root-relative POSIX paths of the video files under folder ``root`` (a real path)."""

    def unreadable(exc: OSError) -> None:
        logger.warning("%s: cannot read this folder (%s); videos in it are skipped",
                       escape_name(exc.filename or root), exc.strerror or exc)

    found = []
    for folder, dirs, files in os.walk(root, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(folder, d)) not in excluded)
        for name in files:
            if not _is_video_name(name):
                continue
            path = os.path.join(folder, name)
            # a link to nothing (a share that is not mounted) is taken too: it fails as its own video
            if os.path.isfile(path) or Path(path).is_fifo() or (os.path.islink(path) and not os.path.exists(path)):
                found.append(os.path.relpath(path, root).replace(os.sep, "/"))
    return found


def _inside(path: str, folder: str) -> bool:
    return path != folder and path.startswith(folder.rstrip(os.sep) + os.sep)


def discover(inputs: list[str], *, exclude: list[str] | tuple[str, ...] = ()) -> list[VideoInput]:
    """Video files under ``inputs`` (files, or directories searched recursively), sorted by id.

    A file given directly is taken whatever its extension; directories contribute files
    with the usual video extensions (not AppleDouble ``._*`` files). Folders in ``exclude``
    (e.g. the job's output) are not searched. Raises :class:`InputError` for a missing input
    or no video at all.
    """
    if any(is_remote(i) for i in inputs):
        return _with_remote(inputs, exclude)
    inputs = [local_path(i) for i in inputs]  # file:///... is a local path
    roots: list[tuple[str, str]] = []  # (real path, as given)
    for given in inputs:
        if not os.path.exists(given):
            raise InputError(f"{escape_name(given)}: no such file or directory")
        real = os.path.realpath(given)
        if real not in (r for r, _ in roots):
            roots.append((real, given))
    excluded = {os.path.realpath(e) for e in exclude}
    folders = sorted(r for r, _ in roots if os.path.isdir(r))
    # the outermost folders: a folder or file inside one of them is found by searching it
    tops = [f for f in folders if not any(_inside(f, o) for o in folders)]
    files = [r for r, _ in roots if not os.path.isdir(r) and not any(_inside(r, t) for t in tops)]
    if len(tops) + len(files) == 1:
        base = tops[0] if tops else os.path.dirname(files[0])
    else:
        base = os.path.commonpath([os.path.dirname(p) for p in tops + files])

    found: dict[str, str] = {}  # real path of the file -> path relative to ``base``
    for top in tops:
        if top in excluded or any(_inside(top, e) for e in excluded):
            continue
        for rel in _walk(top, excluded):
            path = os.path.join(top, rel)
            found.setdefault(os.path.realpath(path), os.path.relpath(path, base))
    for real, _ in roots:  # a file given directly, whatever its extension
        if not os.path.isdir(real):
            found.setdefault(real, os.path.relpath(real, base))

    by_id: dict[str, VideoInput] = {}
    for real, rel in found.items():
        vid = escape_name(rel.replace(os.sep, "/"))
        item = VideoInput(vid, os.path.join(base, rel))
        if vid in by_id:  # only a literal "\xNN" in one name and that byte in another's can meet
            raise InputError(f"{escape_name(item.path)}: two inputs have the same video id {vid!r} "
                             f"({escape_name(by_id[vid].path)})")
        by_id[vid] = item
    if not by_id:
        raise InputError(f"no video files found in {', '.join(escape_name(i) for i in inputs)}")
    return [by_id[k] for k in sorted(by_id)]


def _with_remote(inputs: list[str], exclude: list[str] | tuple[str, ...]) -> list[VideoInput]:
    """:func:`discover` with URIs among ``inputs`` (object storage, HTTP: :mod:`jobs.remote`): a
    prefix's videos are named by their keys relative to it, a file given directly by its name;
    the local inputs are named as :func:`discover` names them. Two videos with one id are an error."""
    local = [i for i in inputs if not is_remote(i)]
    by_id = {v.video: v for v in discover(local, exclude=exclude)} if local else {}
    for given in (i for i in inputs if is_remote(i)):
        for vid, uri in list_videos(given):
            if vid in by_id and by_id[vid].path != uri:
                raise InputError(f"{display_location(uri)}: two inputs have the same video id {vid!r} "
                                 f"({display_location(by_id[vid].path)})")
            by_id[vid] = VideoInput(vid, uri)
    if not by_id:
        raise InputError(f"no video files found in {', '.join(display_location(i) for i in inputs)}")
    return [by_id[k] for k in sorted(by_id)]
