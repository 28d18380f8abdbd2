"""Videos as decord reads them, in one place: what a probe finds, opening a reader, reading frames
forward, and the one error every failure becomes.

Every module that reads a video (the probe, the shard decoder, int8 calibration, rendering and
the Ray-free ``detect`` command) opens it with :func:`open_video`, so a video that cannot be read
fails the same way everywhere: :class:`VideoReadError`, naming the file and the cause in one
line. Callers that report through an exception class of their own (a Ray task's, say) wrap it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np

from jobs.errors import ImageReadError, one_line

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    """What a probe found. ``keyframes`` are frame indices where decoding can start."""

    frames_total: int
    fps: float
    duration_s: float
    width: int
    height: int
    codec: str
    keyframes: tuple[int, ...]


class ProbedVideo(NamedTuple):
    """A video the probe could read: its id in the job, its path and what the probe found."""

    video: str
    path: str
    info: VideoInfo


class VideoReadError(ImageReadError):
    """A video that cannot be opened or decoded. ``path`` names it and ``cause`` says why in one
    line: ``no such file``, ``the file is empty``, ``not a readable video (...)`` or ``decoding
    failed at frame N (...)``; the message is ``"PATH: CAUSE"``."""

    def __reduce__(self) -> tuple[Any, ...]:
        # the default would call VideoReadError(message): Ray pickles exceptions raised in tasks
        return (type(self), (self.path, self.cause))


def _decord_errors() -> tuple[type[BaseException], ...]:
    """What decord raises on a file or frame it cannot read (it also raises plain RuntimeErrors)."""
    import decord

    return (decord.DECORDError, RuntimeError)


class _DLPack:
    """Lets numpy view a decord frame through DLPack instead of copying it (``asnumpy``)."""

    __slots__ = ("_nd",)

    def __init__(self, nd: Any) -> None:
        self._nd = nd

    def __dlpack__(self, **_: Any) -> Any:
        return self._nd.to_dlpack()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU


def keyframe_before(keyframes: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """For each of ``frames``, the last of ``keyframes`` (ascending, non-empty) at or before
    it: where decoding it starts. A frame before the first keyframe gets the first."""
    keyframes = np.asarray(keyframes, np.int64)
    return keyframes[np.maximum(np.searchsorted(keyframes, frames, side="right") - 1, 0)]


def read_frames(reader: Any, frames: np.ndarray, keyframes: np.ndarray) -> Iterator[np.ndarray]:
    """Yields the (H, W, 3) uint8 RGB frames at ascending indices ``frames``, decoding forward.

    Frames between two wanted ones are skipped (decoded, not converted to RGB) unless a
    keyframe lies between them, in which case the reader seeks to it. This reads each
    GOP once, where ``get_batch`` seeks and converts per frame: about half the CPU time.
    The yielded array is only valid until the next one is read. ``reader`` is a raw
    ``decord.VideoReader``; :meth:`OpenVideo.read` is this with its errors mapped.
    """
    pos = 0  # the frame the next ``reader.next()`` returns
    for idx in frames.tolist():
        if idx != pos:
            k = int(np.searchsorted(keyframes, idx, side="right")) - 1
            if idx < pos or (k >= 0 and keyframes[k] > pos):
                reader.seek_accurate(idx)
            else:
                reader.skip_frames(idx - pos)
        yield np.from_dlpack(_DLPack(reader.next()))
        pos = idx + 1


class OpenVideo:
    """A decord reader over one file whose failures are :class:`VideoReadError`\\ s naming it.

    decord's reader keeps decoding ahead on its own thread and holds every frame it decodes
    (dmlc/decord#157, #208), so close it (or leave the ``with`` block) as soon as the frames
    wanted are read: :meth:`close` drops the reader, which stops its read-ahead.
    """

    def __init__(
        self, path: str, reader: Any, *, source: str | None = None, release: Callable[[], Any] | None = None
    ) -> None:
        self.path = path
        self.source = source or path  # the file decord opened: ``path``, or a remote video's staged copy
        self._release = release  # called once on close (a staged copy's lock)
        self._reader = reader
        self._keyframes: np.ndarray | None = None

    def __enter__(self) -> OpenVideo:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._reader = None
        release, self._release = self._release, None
        if release is not None:
            release()

    @property
    def reader(self) -> Any:
        """The raw ``decord.VideoReader``, for what this class does not wrap (its errors unmapped)."""
        if self._reader is None:
            raise ValueError(f"{self.path}: the video is closed")
        return self._reader

    def __len__(self) -> int:
        return len(self.reader)

    def keyframes(self) -> np.ndarray:
        """(K,) int64 ascending indices of the keyframes the container lists (maybe none).
        A container whose index cannot be read is :class:`VideoReadError` "not a readable video"."""
        if self._keyframes is None:
            try:
                self._keyframes = np.asarray(self.reader.get_key_indices(), dtype=np.int64)
            except _decord_errors() as exc:
                raise VideoReadError(self.path, f"not a readable video ({self._line(exc)})") from None
        return self._keyframes

    def read(self, frames: np.ndarray) -> Iterator[np.ndarray]:
        """:func:`read_frames` over this video: the (H, W, 3) uint8 RGB frames at ascending
        ``frames``, each valid until the next is read. A frame that cannot be decoded is
        :class:`VideoReadError` "decoding failed at frame N (...)", N the frame it failed at."""
        keyframes = self.keyframes()
        done = 0
        try:
            for image in read_frames(self.reader, frames, keyframes):
                yield image
                done += 1
        except (*_decord_errors(), IndexError) as exc:
            raise self._decoding_failed(int(frames[done]), exc) from None

    def timestamps(self, frames: np.ndarray) -> np.ndarray:
        """(n,) float64 start times in seconds of ``frames``; errors name the first of them."""
        try:
            return np.asarray(self.reader.get_frame_timestamp(frames.tolist())[:, 0], dtype=np.float64)
        except (*_decord_errors(), IndexError) as exc:
            raise self._decoding_failed(int(frames[0]), exc) from None

    def batch(self, frames: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 RGB ``frames`` by random access (a copy); errors name the first."""
        try:
            return self.reader.get_batch(frames.tolist()).asnumpy()
        except (*_decord_errors(), IndexError) as exc:
            raise self._decoding_failed(int(frames[0]), exc) from None

    def _decoding_failed(self, frame: int, exc: BaseException) -> VideoReadError:
        return VideoReadError(self.path, f"decoding failed at frame {frame} ({self._line(exc)})")

    def _line(self, exc: BaseException) -> str:
        """decord's line, naming the video's display name rather than its staged copy."""
        return one_line(str(exc).replace(self.source, self.path) if self.source != self.path else exc)


def open_video(path: str | os.PathLike[str], *, threads: int = 1) -> OpenVideo:
    """Opens ``path`` with a decord CPU reader decoding on ``threads`` threads.

    Raises :class:`VideoReadError`: ``no such file``, ``the file is empty`` (a regular file of
    0 bytes; a FIFO or device is left to decord) or ``not a readable video (decord's line)``.
    """
    import decord

    from jobs.remote import is_remote, local_path

    name = os.fspath(path)
    if is_remote(name):
        return _open_remote(name, threads=threads)
    name = local_path(name)
    if not os.path.exists(name):
        raise VideoReadError(name, "no such file")
    if os.path.isfile(name) and os.path.getsize(name) == 0:
        raise VideoReadError(name, "the file is empty")
    from contextlib import ExitStack

    stack = ExitStack()
    try:
        source = _readable_copy(stack, name)
        with utf8_alias(source) as openable:
            reader = decord.VideoReader(openable, ctx=decord.cpu(0), num_threads=threads)
    except VideoReadError:
        stack.close()
        raise
    except _decord_errors() as exc:
        stack.close()
        raise VideoReadError(name, f"not a readable video ({one_line(exc)})") from None
    if source == name:
        return OpenVideo(name, reader)
    return OpenVideo(name, reader, source=source, release=stack.close)


def _readable_copy(stack: Any, local: str, shown: str | None = None, identity: str | None = None) -> str:
    """The file decord should open for the local file ``local``: itself, or for an MPEG
    transport or program stream or an AVI (which decord misreads: :mod:`jobs.remux`) its
    Matroska copy in the stage cache (``identity``: see :func:`jobs.stage.remuxed`), held until
    ``stack`` (an ``ExitStack``) closes. Raises
    :class:`VideoReadError` naming ``shown`` (default ``local``) where a stream cannot be
    copied; an AVI that cannot be copied is read as it is."""
    from jobs.remux import remux_kind
    from jobs.stage import StageError, remuxed

    kind = remux_kind(local)
    if kind is None:
        return local
    try:
        with utf8_alias(local) as openable:  # the alias resolves to the same file: the same copy
            return str(stack.enter_context(remuxed(openable, identity=identity)))
    except StageError as exc:
        if kind != "avi":
            raise VideoReadError(shown or local, str(exc)) from None
        logger.warning("%s: read as it is, its timestamps unknown (%s)", shown or local, exc)
        return local


def _open_remote(uri: str, *, threads: int) -> OpenVideo:
    """Opens a video in object storage or behind HTTP through this node's stage cache
    (:mod:`jobs.stage`): the copy stays until the video is closed. Errors name the URI
    without its credentials."""
    from contextlib import ExitStack

    import decord

    from jobs.stage import StageError, staged
    from sinks.location import display_location

    shown = display_location(uri)
    stack = ExitStack()
    try:
        staged_copy = stack.enter_context(staged(uri))
        copy = _readable_copy(stack, str(staged_copy), shown, identity=staged_copy.name)  # named by content
        reader = decord.VideoReader(copy, ctx=decord.cpu(0), num_threads=threads)
    except StageError as exc:
        stack.close()
        raise VideoReadError(shown, str(exc)) from None
    except VideoReadError:
        stack.close()
        raise
    except _decord_errors() as exc:
        stack.close()
        raise VideoReadError(shown, f"not a readable video ({one_line(str(exc).replace(copy, shown))})") from None
    return OpenVideo(shown, reader, source=copy, release=stack.close)


@contextmanager
def utf8_alias(name: str) -> Iterator[str]:
    """``name``, or where it holds bytes that are not UTF-8 (surrogate escapes, which decord
    cannot pass to FFmpeg) a symbolic link to it with a UTF-8 name, for as long as the block
    runs: FFmpeg opens the file once, so the link can go as soon as the reader exists."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        yield name
        return
    with tempfile.TemporaryDirectory(prefix="maskjobs-") as tmp:
        ext = os.path.splitext(os.fsencode(name))[1]
        alias = os.path.join(tmp, "video" + (ext.decode() if ext.isascii() else ""))
        os.symlink(os.path.abspath(os.fsencode(name)), alias)
        yield alias
