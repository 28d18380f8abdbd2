"""A bounded cache of remote videos on each node: each object copied once per node, then shared.

decord opens files, and opening one over the network would read the whole object at every
open (:mod:`jobs.remote`), so a worker that decodes a remote video (a probe, a shard, a
thumbnail) first stages it here: :func:`staged` yields a local copy, downloading it unless a
worker on the same node already has. A local MPEG stream or AVI gets its Matroska copy here
the same way (:func:`remuxed`; :mod:`jobs.remux` says why). One folder per user and node (``$MASKJOBS_STAGE_DIR``,
default ``<tmp>/maskjobs-stage-<uid>``) holds at most ``$MASKJOBS_STAGE_MAX_GB`` (default 20)
GB: the least recently used copies no worker is reading are evicted to make room. The job's
driver calls :func:`clear_stage` on every node at the end (:mod:`jobs.pipeline.nodes`).

Workers on a node coordinate with ``flock`` on one lock file per object: an exclusive lock while
one downloads (the others wait for it instead of downloading again), a shared lock while any
reads, which eviction respects. Copies are written aside and renamed into place, so a killed
download leaves no partial copy that looks complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import posixpath
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from detector.errors import one_line
from jobs.remote import copy_object, scrub, stat_object
from sinks.location import display_location

logger = logging.getLogger(__name__)

DIR_ENV = "MASKJOBS_STAGE_DIR"
MAX_GB_ENV = "MASKJOBS_STAGE_MAX_GB"
DEFAULT_MAX_GB = 20.0
_LOCK = ".lock"


class StageError(RuntimeError):
    """A remote video could not be staged; the message says why in one line, without credentials."""


def stage_dir() -> Path:
    """This node's stage folder (created private to the user)."""
    folder = Path(os.environ.get(DIR_ENV) or Path(tempfile.gettempdir()) / f"maskjobs-stage-{os.getuid()}")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def max_bytes() -> int:
    return int(float(os.environ.get(MAX_GB_ENV) or DEFAULT_MAX_GB) * 1e9)


@contextmanager
def staged(uri: str, *, folder: Path | None = None, limit: int | None = None) -> Iterator[Path]:
    """Yields a local copy of the object at ``uri``, kept from eviction until the block ends.

    Raises :class:`StageError` when the object cannot be read or does not fit the cache."""
    limit = max_bytes() if limit is None else limit
    shown = display_location(uri)
    try:
        size, stamp = stat_object(uri)
    except Exception as exc:  # pyarrow's, fsspec's and urllib's errors share no base: each becomes one line
        raise StageError(f"cannot read it ({scrub(one_line(exc), uri)})") from None
    if size is not None and size > limit:
        raise StageError(f"{size:,} bytes do not fit the stage cache ({limit:,} bytes; set {MAX_GB_ENV})")
    key = hashlib.sha256(f"{shown}\0{size}\0{stamp}".encode()).hexdigest()[:32]
    suffix = posixpath.splitext(urllib.parse.urlsplit(uri).path)[1][:16]
    with _cached(folder or stage_dir(), f"{key}{suffix}", size or 0, limit, lambda part: _download(uri, part)) as copy:
        yield copy


@contextmanager
def remuxed(
    path: str | Path, *, identity: str | None = None, folder: Path | None = None, limit: int | None = None
) -> Iterator[Path]:
    """Yields a Matroska copy of the local MPEG stream or AVI ``path``
    (:func:`jobs.remux.remux_to_matroska`), made once per node and kept from eviction until the
    block ends. ``identity`` names the file's content where its modification time does not (a
    staged copy, which every use touches: its name); default: its real path, size and mtime.

    Raises :class:`StageError` when the file cannot be read or copied."""
    from jobs.remux import RemuxError, remux_to_matroska

    limit = max_bytes() if limit is None else limit
    try:
        st = os.stat(path)
    except OSError as exc:
        raise StageError(f"cannot read it ({one_line(exc)})") from None
    if st.st_size > limit:
        raise StageError(f"{st.st_size:,} bytes do not fit the stage cache ({limit:,} bytes; set {MAX_GB_ENV})")
    identity = identity or f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}"
    key = hashlib.sha256(f"remux\0{identity}".encode()).hexdigest()[:32]

    def make(part: Path) -> None:
        t0 = time.monotonic()
        try:
            n = remux_to_matroska(path, part)
        except RemuxError as exc:
            raise StageError(str(exc)) from None
        logger.info("remuxed %s into Matroska: %d packets in %.2f s", path, n, time.monotonic() - t0)

    with _cached(folder or stage_dir(), f"{key}.mkv", st.st_size, limit, make) as copy:
        yield copy


@contextmanager
def _cached(folder: Path, name: str, size: int, limit: int, make: Callable[[Path], None]) -> Iterator[Path]:
    """Yields ``folder / name``, made unless a worker on this node already has, and
    shared-locked until the block ends. ``make(part)`` writes the file at ``part``, which is
    renamed into place once whole (a killed maker leaves no copy that looks complete)."""
    copy = folder / name
    with open(folder / f"{name.split('.', 1)[0]}{_LOCK}", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # readers share; eviction needs it exclusive
        if not copy.exists():
            # one maker per node, the others wait here (the shared lock is let go first, so two
            # waiting makers never hold each other up, nor does a reader in this very process)
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not copy.exists():
                _make_room(folder, size, limit, keep=copy)
                part = copy.with_name(f".{copy.name}.{os.getpid()}.part")
                try:
                    make(part)
                    os.replace(part, copy)
                finally:
                    part.unlink(missing_ok=True)
            fcntl.flock(lock, fcntl.LOCK_SH)
        now = time.time_ns()
        os.utime(copy, ns=(now, now))  # most recently used (the clock's ns: file times tick coarsely)
        yield copy


def _download(uri: str, part: Path) -> None:
    t0 = time.monotonic()
    try:
        with open(part, "wb") as f:
            n = copy_object(uri, f)
    except Exception as exc:  # as in staged(): one line (the part is removed by _cached)
        raise StageError(f"cannot read it ({scrub(one_line(exc), uri)})") from None
    logger.info("staged %s: %d bytes in %.1f s", display_location(uri), n, time.monotonic() - t0)


def _copies(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != _LOCK]


def _make_room(folder: Path, size: int, limit: int, *, keep: Path) -> None:
    """Evicts the least recently used copies no one reads until ``size`` more bytes fit."""
    copies = sorted(_copies(folder), key=lambda p: p.stat().st_mtime)
    used = sum(p.stat().st_size for p in copies)
    for victim in copies:
        if used + size <= limit:
            return
        victim_size = victim.stat().st_size
        if victim != keep and _evict(victim):
            used -= victim_size
    if used + size > limit:
        logger.warning("stage cache %s over its cap: %d bytes in copies being read", folder, used)


def _evict(copy: Path) -> bool:
    """Removes ``copy`` unless a worker reads it (its lock is held); True if removed."""
    lock_path = copy.with_name(copy.name.split(".", 1)[0] + _LOCK)
    with open(lock_path, "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        copy.unlink(missing_ok=True)
        return True


def clear_stage(folder: Path | None = None) -> int:
    """Removes this node's copies no worker is reading, and downloads a killed worker left
    aside; returns the bytes freed."""
    folder = folder or stage_dir()
    freed = 0
    for copy in _copies(folder):
        size = copy.stat().st_size
        if _evict(copy):
            freed += size
    for part in folder.glob(".*.part"):
        pid = part.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            part.unlink(missing_ok=True)
    return freed
