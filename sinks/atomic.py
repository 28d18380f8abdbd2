"""Atomic file output: write a temporary file beside the target, move it into place when complete.

Every file maskjobs writes goes through here, on a local path or on any pyarrow filesystem,
so a reader sees the whole new file or the old one (or none), never part of one. One naming
scheme for the file written aside: ``.NAME.<16 hex>.part`` in the target's folder (dot-prefixed,
so Parquet readers and ``ls`` skip it; beside the target, so the final move is a rename on the
same file system). A local file is fsynced before the rename, and its folder after it on POSIX,
so a crash leaves the old file or the complete new one, never an empty one. On an object store
the move is a single server-side copy: the final object appears whole or not at all.

A writer that is killed leaves its ``.part`` behind; :func:`sweep` removes them (all of them
where the caller owns the folder, e.g. an output location at the start of a run; else only those
older than a grace period, so a concurrent writer's file is left alone).

Two shapes:
    atomic_write(fs, path, write_fn)   pyarrow filesystems (local, S3, ...): ``write_fn(stream)``
    atomic_output(path) -> temp Path   for libraries that want a path (safetensors, ONNX, ffmpeg)

Owner only: what maskjobs writes can hold faces (thumbnails in ``tracks.parquet``, the HTML
report, annotated videos) and where and when people were seen, so a local file is written
``0600`` (from its creation on, whatever the umask) and a folder maskjobs creates is ``0700``
(:func:`make_dirs`). Folders that already exist keep their mode: the user chose it. Object
stores have no modes; their access is the bucket's policy.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import posixpath
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.fs as pafs

from detector.errors import one_line

logger = logging.getLogger(__name__)

PART_SUFFIX = ".part"
# ``.NAME.<hex>.part``; the hex is the random part (the earlier weights writer put its pid before
# it, ``.NAME.<pid>.<hex>.part``, which matches too). ``.tmp-...`` was the earlier name of the
# output store's and the renderers' files written aside: swept as well, so a rerun over an output
# written by an earlier version still cleans it.
_PART_NAME = re.compile(r"^\..+\.[0-9a-f]{8,}\.part$")
_LEGACY_PREFIX = ".tmp-"
FILE_MODE = 0o600  # every local file written here: owner read/write only
DIR_MODE = 0o700  # every local folder created here: owner only


def part_name(name: str) -> str:
    """The base name to write ``name`` aside under: ``.NAME.<16 hex>.part``."""
    return f".{name}.{secrets.token_hex(8)}{PART_SUFFIX}"


def is_part(name: str) -> bool:
    """Whether base ``name`` is a file written aside by :func:`atomic_write` / :func:`atomic_output`."""
    return bool(_PART_NAME.match(name)) or name.startswith(_LEGACY_PREFIX)


def _fsync_file(path: str | Path) -> None:
    """Flushes a closed file's data to disk (for one a library wrote and closed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str | Path) -> None:
    """Makes a rename in ``folder`` durable where the file system allows it: POSIX only (Windows
    cannot open a folder for it), and best effort (some FUSE and network mounts refuse to fsync
    a folder; the rename has happened and the file is complete either way)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        logger.debug("%s: cannot fsync the folder (%s)", folder, exc)


def make_dirs(path: str | Path, *, fs: pafs.FileSystem | None = None) -> None:
    """Creates ``path`` and any missing parents; on a local file system each folder created is
    :data:`DIR_MODE` (an existing one is left as it is). On another file system: ``fs.create_dir``."""
    if fs is not None and not isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(str(path), recursive=True)
        return
    missing: list[Path] = []
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:  # made by a concurrent writer: theirs to keep
            continue
        os.chmod(folder, DIR_MODE)  # the umask may have taken bits the owner needs


def _open_private(path: str) -> BinaryIO:
    """A new local file open for writing, :data:`FILE_MODE` from its creation on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), FILE_MODE)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, FILE_MODE)  # the umask may have taken bits the owner needs
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def _delete_quietly(fs: pafs.FileSystem, path: str) -> bool:
    """Removes ``path``; False if it could not be (gone already, or no permission)."""
    try:
        fs.delete_file(path)
    except (OSError, pa.ArrowException):
        return False
    return True


# errors that no retry mends: the write fails at once
_PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.EISDIR, errno.ENOTDIR})
WRITE_ATTEMPTS = 4
WRITE_BACKOFF_S = 0.5


def _transient(exc: BaseException) -> bool:
    """An error a later attempt may not meet: a full disk being freed, an object store's
    throttling or dropped connection (pyarrow raises those as OSError without an errno)."""
    if isinstance(exc, OSError):
        return exc.errno not in _PERMANENT_ERRNOS
    return isinstance(exc, pa.ArrowException)


def atomic_write(
    fs: pafs.FileSystem,
    path: str,
    write_fn: Callable[[BinaryIO], None],
    *,
    attempts: int = WRITE_ATTEMPTS,
    backoff_s: float = WRITE_BACKOFF_S,
) -> None:
    """Writes ``path`` on ``fs`` with ``write_fn(stream)`` aside, then moves it into place.

    On any exception the file written aside is removed and ``path`` is untouched. A transient
    error (:func:`_transient`: a full disk, an object store's hiccup) is retried, ``attempts``
    in all, after ``backoff_s``, then twice that, and so on; the last error is raised.
    ``write_fn`` may thus run more than once: it must write the same bytes each time. The
    folder of ``path`` must exist on a local filesystem (object stores have no folders to create).
    """
    for attempt in range(1, attempts + 1):
        try:
            _write_once(fs, path, write_fn)
            return
        except (OSError, pa.ArrowException) as exc:
            if attempt == attempts or not _transient(exc):
                raise
            delay = backoff_s * 2 ** (attempt - 1)
            logger.warning("%s: write failed (%s); attempt %d of %d in %.1f s",
                           path, one_line(exc, limit=200), attempt + 1, attempts, delay)
            time.sleep(delay)


def _write_once(fs: pafs.FileSystem, path: str, write_fn: Callable[[BinaryIO], None]) -> None:
    tmp = posixpath.join(posixpath.dirname(path), part_name(posixpath.basename(path)))
    local = isinstance(fs, pafs.LocalFileSystem)
    try:
        if local:
            with _open_private(tmp) as f:  # local: fsync before the rename, so a crash leaves no empty file
                write_fn(f)
                f.flush()
                os.fsync(f.fileno())
        else:
            with fs.open_output_stream(tmp) as f:
                write_fn(f)
        fs.move(tmp, path)
    except BaseException:
        _delete_quietly(fs, tmp)
        raise
    if local:
        _fsync_dir(posixpath.dirname(path))


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yields a temporary local path beside ``path``; moved to ``path`` if the block succeeds.

    The block (or the library it calls) creates and closes the file at the yielded path. On any
    exception it is removed, so ``path`` is either the complete new file or untouched, and no
    partial file is left behind. Creates ``path``'s folder (:func:`make_dirs`); the file is made
    :data:`FILE_MODE` before it is moved into place.
    """
    dest = Path(path)
    make_dirs(dest.parent)
    tmp = dest.with_name(part_name(dest.name))
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        _fsync_file(tmp)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


def sweep(
    directory: str | Path,
    *,
    fs: pafs.FileSystem | None = None,
    older_than_s: float | None = None,
    recursive: bool = False,
) -> int:
    """Removes the files written aside (:func:`is_part`) in ``directory``; returns how many.

    ``fs``: the filesystem ``directory`` is on (default: local). ``older_than_s``: only those
    last modified that many seconds ago or more (None: all, for a caller that owns the folder;
    a file whose age is unknown is then kept). A missing folder has nothing to sweep.
    """
    fs = fs or pafs.LocalFileSystem()
    root = Path(directory).as_posix() if isinstance(directory, Path) else str(directory).rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=recursive))
    cutoff = None if older_than_s is None else time.time() - older_than_s
    removed = 0
    for info in infos:
        if info.type != pafs.FileType.File or not is_part(info.base_name):
            continue
        if cutoff is not None and (info.mtime is None or _timestamp(info.mtime) > cutoff):
            continue
        removed += _delete_quietly(fs, info.path)
    if removed:
        logger.info("%s: removed %d file(s) left aside by an interrupted write", root, removed)
    return removed


def _timestamp(mtime: dt.datetime) -> float:
    # pyarrow gives aware datetimes (UTC) for most filesystems; a naive one is UTC too
    return (mtime if mtime.tzinfo else mtime.replace(tzinfo=dt.timezone.utc)).timestamp()
