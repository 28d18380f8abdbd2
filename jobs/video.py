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
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np

from detector.errors import is_utf8, printable_name
from jobs.errors import ImageReadError, one_line

logger = logging.getLogger(__name__)

# a file whose first frame does not decode: its start is cut short or damaged
UNDECODABLE = "not a readable video (its first frame does not decode: cut short or damaged?)"
# FFmpeg's decoder refused a packet: the data there is damaged, or the file ends mid-frame
REFUSED = "damaged or cut-short data: the decoder refused it"


@dataclass(frozen=True)
class VideoInfo:
    """What a probe found. ``keyframes`` are frame indices where decoding can start. ``copied``:
    a local file read through its Matroska copy in the stage cache (:mod:`jobs.remux`);
    ``remuxed``: a local or remote one (a remote video's staged file is not a copy of its own)."""

    frames_total: int
    fps: float
    duration_s: float
    width: int
    height: int
    codec: str
    keyframes: tuple[int, ...]
    copied: bool = False
    remuxed: bool = False


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


_PLACE = re.compile(r"\[\d\d:\d\d:\d\d\] \S+\.(?:cc|h|cpp):\d+: ")  # "[20:07:36] /project/src/video/video_reader.cc:285: "


def _decord_line(text: str, source: str, shown: str) -> str:
    """decord's message as one line of a cause: without the times and C++ source lines it puts
    before each part, nor its ``[file] `` prefix (the error names the file already), and
    naming ``shown`` where it names ``source`` (a staged or Matroska copy)."""
    text = _PLACE.sub("", text).replace(f"[{source}] ", "").replace(source, printable_name(shown))
    return one_line(text.strip())


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
        yield frame_array(reader.next())
        pos = idx + 1


def frame_array(frame: Any) -> np.ndarray:
    """A decord frame as an (H, W, 3) uint8 RGB array, a view where decord's rows are packed.

    decord2 (3.4) hands frames of some narrow widths (16, 32, 48 and 96 px measured) with
    each row's padding counted as channels: (H, W, k), k > 3, the row's pixels in its first
    3W bytes (bit-equal to PyAV's RGB). Those are copied out, packed; other shapes are
    returned as they are."""
    image = np.from_dlpack(_DLPack(frame))
    if image.ndim == 3 and image.shape[2] > 3:
        h, w, k = image.shape
        image = np.ascontiguousarray(image.reshape(h, w * k)[:, : w * 3]).reshape(h, w, 3)
    return image


class OpenVideo:
    """A decord reader over one file whose failures are :class:`VideoReadError`\\ s naming it.

    ``lead``: frames at the start of the file decord opened (``source``) that are not the
    video's: an MP4's frames its edit list hides, kept in its Matroska copy to decode the first
    one shown (:mod:`jobs.remux`). Indices, keyframes, the length and times here are the video's
    (FFmpeg's): frame 0 is the first shown, at time 0. ``remuxed``: ``source`` is a Matroska copy.

    decord's reader keeps decoding ahead on its own thread and holds every frame it decodes
    (dmlc/decord#157, #208), so close it (or leave the ``with`` block) as soon as the frames
    wanted are read: :meth:`close` drops the reader, which stops its read-ahead.
    """

    def __init__(
        self, path: str, reader: Any, *, source: str | None = None, release: Callable[[], Any] | None = None,
        lead: int = 0, remuxed: bool = False,
    ) -> None:
        self.path = path
        self.source = source or path  # the file decord opened: ``path``, or a staged or Matroska copy
        self.lead = lead
        self.remuxed = remuxed
        self._release = release  # called once on close (a staged copy's lock)
        self._reader = reader
        self._keyframes: np.ndarray | None = None  # in ``source``'s frames
        self._start: float | None = None  # the time of ``source``'s frame ``lead``

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
        """The raw ``decord.VideoReader`` over ``source`` (its frames counted from the first of
        ``lead``), for what this class does not wrap (its errors unmapped)."""
        if self._reader is None:
            raise ValueError(f"{self.path}: the video is closed")
        return self._reader

    def whole(self) -> OpenVideo:
        """This reader over all of ``source``'s frames, the ``lead`` included (their indices are
        the video's plus ``lead``); closing it leaves this one open."""
        return OpenVideo(self.path, self.reader, source=self.source)

    def __len__(self) -> int:
        return max(len(self.reader) - self.lead, 0)

    def _source_keyframes(self) -> np.ndarray:
        if self._keyframes is None:
            try:
                self._keyframes = np.asarray(self.reader.get_key_indices(), dtype=np.int64)
            except _decord_errors() as exc:
                raise VideoReadError(self.path, f"not a readable video ({self.error_line(exc)})") from None
        return self._keyframes

    def keyframes(self) -> np.ndarray:
        """(K,) int64 ascending indices of the keyframes the container lists (maybe none; with a
        ``lead``, those shown). A container whose index cannot be read is
        :class:`VideoReadError` "not a readable video"."""
        keys = self._source_keyframes() - self.lead
        return keys[keys >= 0]

    def read(self, frames: np.ndarray) -> Iterator[np.ndarray]:
        """:func:`read_frames` over this video: the (H, W, 3) uint8 RGB frames at ascending
        ``frames``, each valid until the next is read. A frame that cannot be decoded is
        :class:`VideoReadError` "decoding failed at frame N (...)", N the frame it failed at."""
        frames = np.asarray(frames, dtype=np.int64)
        keyframes = self._source_keyframes()
        done = 0
        try:
            for image in read_frames(self.reader, frames + self.lead, keyframes):
                yield image
                done += 1
        except (*_decord_errors(), IndexError) as exc:
            raise self._decoding_failed(int(frames[done]), exc) from None

    def frame_size(self) -> tuple[int, int]:
        """``(height, width)`` of the frames as decoded (turned upright where the file says so),
        read off the first. A first frame that does not decode is :data:`UNDECODABLE`."""
        try:
            height, width = self.reader[0].shape[:2]
        except (*_decord_errors(), IndexError) as exc:
            logger.debug("%s: frame 0: %s", self.path, self.error_line(exc))
            raise VideoReadError(self.path, UNDECODABLE) from None
        return int(height), int(width)

    def timestamps(self, frames: np.ndarray) -> np.ndarray:
        """(n,) float64 start times in seconds of ``frames``; errors name the first of them."""
        return self._times(frames)[:, 0]

    def end_s(self) -> float:
        """When the last frame ends, in seconds: the video's duration."""
        n = len(self)
        return float(self._times(np.array([n - 1]))[0, 1]) if n else 0.0

    def _times(self, frames: np.ndarray) -> np.ndarray:
        """(n, 2) float64 start and end times of ``frames``, from the first shown frame's start."""
        frames = np.asarray(frames, dtype=np.int64)
        try:
            if self._start is None:
                self._start = float(self.reader.get_frame_timestamp(self.lead)[0]) if self.lead else 0.0
            times = np.asarray(self.reader.get_frame_timestamp((frames + self.lead).tolist()), dtype=np.float64)
        except (*_decord_errors(), IndexError) as exc:
            raise self._decoding_failed(int(frames[0]), exc) from None
        return times.reshape(-1, 2) - self._start

    def batch(self, frames: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 RGB ``frames`` by random access (a copy); errors name the first."""
        frames = np.asarray(frames, dtype=np.int64)
        try:
            try:
                return self.reader.get_batch((frames + self.lead).tolist()).asnumpy()
            except _decord_errors():  # a narrow frame whose rows decord pads is refused (frame_array)
                return np.stack([self._seek_read(int(i)) for i in (frames + self.lead).tolist()])
        except (*_decord_errors(), IndexError) as exc:
            raise self._decoding_failed(int(frames[0]), exc) from None

    def _seek_read(self, index: int) -> np.ndarray:
        """A copy of the frame at ``index`` of ``source``, through a seek (decord's errors unmapped)."""
        self.reader.seek_accurate(index)
        return frame_array(self.reader.next()).copy()

    def _decoding_failed(self, frame: int, exc: BaseException) -> VideoReadError:
        return VideoReadError(self.path, f"decoding failed at frame {frame} ({self.error_line(exc)})")

    def error_line(self, exc: BaseException) -> str:
        """decord's line, naming the video's display name rather than its staged copy; its
        check that FFmpeg took a packet (``threaded_decoder.cc: Check failed:
        avcodec_send_packet(...)``, timestamps and source paths included) as :data:`REFUSED`."""
        text = str(exc)
        if "avcodec_send_packet" in text:
            return REFUSED
        return _decord_line(text, self.source, self.path)


def open_video(path: str | os.PathLike[str], *, threads: int = 1) -> OpenVideo:
    """Opens ``path`` with a decord CPU reader decoding on ``threads`` threads.

    Raises :class:`VideoReadError`: ``no such file``, ``the file is empty`` (a regular file of
    0 bytes; a FIFO or device is left to decord) or ``not a readable video (decord's line)``.
    """
    from jobs.remote import is_remote, local_path

    name = os.fspath(path)
    if is_remote(name):
        return _open_remote(name, threads=threads)
    name = local_path(name)
    if not os.path.exists(name):
        raise VideoReadError(name, "a link to nothing (broken symbolic link)" if os.path.islink(name) else "no such file")
    if os.path.isfile(name) and os.path.getsize(name) == 0:
        raise VideoReadError(name, "the file is empty")
    return _open_local(name, name, threads=threads)


def _open_local(
    local: str, shown: str, *, threads: int, identity: str | None = None, release: Callable[[], Any] | None = None
) -> OpenVideo:
    """A reader over the local file ``local`` (``shown``: the name errors and the video use), or
    over its Matroska copy where decord misreads the file itself (:mod:`jobs.remux`): MPEG
    streams and AVIs by their bytes; a file that starts mid-GOP, or one whose first timestamp
    decord puts below 0 where its start holds frames FFmpeg does not show (an edit list's, an
    open GOP's leading frames: :func:`jobs.remux.scan_start`). ``identity``: the copy's
    (:func:`jobs.stage.remuxed`). ``release`` is called when the video is closed, or here on
    failure. Raises :class:`VideoReadError` naming ``shown``."""
    from contextlib import ExitStack

    import decord

    from jobs.remux import remux_kind, scan_start

    stack = ExitStack()
    if release is not None:
        stack.callback(release)
    source = local
    try:
        kind = remux_kind(local)
        if kind is not None:
            source = _copy(stack, local, shown, identity, optional=kind == "avi")
        with utf8_alias(source) as openable:
            reader = decord.VideoReader(openable, ctx=decord.cpu(0), num_threads=threads)
        lead = dropped = 0
        # an MPEG stream or AVI read as it is (its copy failed) is not looked at, nor copied, again
        early, mid_gop = _misread(reader) if kind is None else (False, False)
        if early:
            with utf8_alias(local) as openable:
                lead, dropped = scan_start(openable)
        if lead or dropped or mid_gop:
            source = _copy(stack, local, shown, identity, optional=True)
            if source == local:  # read as it is, as before
                lead = 0
            else:
                reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=threads)
    except VideoReadError:
        stack.close()
        raise
    except _decord_errors() as exc:
        stack.close()
        if "cannot find video stream" in str(exc):  # decord's assertion, with a stream index of -1
            raise VideoReadError(shown, "no video stream (a sound recording?)") from None
        if "avfilter_graph_create_filter" in str(exc):  # no picture format: FFmpeg's probe decoded nothing
            raise VideoReadError(shown, UNDECODABLE) from None
        line = _decord_line(str(exc), source, shown)  # a newline in a name ends no line
        raise VideoReadError(shown, f"not a readable video ({line})") from None
    if source == shown and release is None:
        return OpenVideo(shown, reader)
    return OpenVideo(shown, reader, source=source, release=stack.close, lead=lead, remuxed=source != local)


def _misread(reader: Any) -> tuple[bool, bool]:
    """``(early, mid_gop)``: decord puts the first frame before time 0 (an edit list, which may
    hide frames), and the file's first keyframe is not its first frame (it starts mid-GOP:
    frames no decoder shows, which decord counts). Either is read through the Matroska copy."""
    try:
        if len(reader) == 0:
            return False, False
        early = float(reader.get_frame_timestamp(0)[0]) < 0.0
        keys = reader.get_key_indices()
        return early, bool(len(keys)) and int(keys[0]) > 0
    except (*_decord_errors(), IndexError):
        return False, False


def _copy(stack: Any, local: str, shown: str, identity: str | None, *, optional: bool) -> str:
    """The Matroska copy of the local file ``local`` in the stage cache (:mod:`jobs.remux`),
    held until ``stack`` (an ``ExitStack``) closes. Where it cannot be made (bigger than the
    stage cache, no PyAV on the node), an ``optional`` copy (an AVI; an MP4 that starts mid-GOP
    or hides frames) gives ``local``, read by decord as it is with a warning: its times, and
    frames after a seek, may be off, where an MPEG stream's every frame would be. Otherwise
    raises :class:`VideoReadError` naming ``shown``."""
    from jobs.stage import StageError, remuxed

    try:
        with utf8_alias(local) as openable:  # the alias resolves to the same file: the same copy
            return str(stack.enter_context(remuxed(openable, identity=identity)))
    except StageError as exc:
        if not optional:
            raise VideoReadError(shown, str(exc)) from None
        logger.warning("%s: read as it is, its times and frames after a seek may be off (%s)", printable_name(shown), exc)
        return local


def _open_remote(uri: str, *, threads: int) -> OpenVideo:
    """Opens a video in object storage or behind HTTP through this node's stage cache
    (:mod:`jobs.stage`): the copy stays until the video is closed. Errors name the URI
    without its credentials."""
    from contextlib import ExitStack

    from jobs.stage import StageError, staged
    from sinks.location import display_location

    shown = display_location(uri)
    stack = ExitStack()
    try:
        staged_copy = stack.enter_context(staged(uri))
    except StageError as exc:
        stack.close()
        raise VideoReadError(shown, str(exc)) from None
    # the Matroska copy is named by the staged copy's content (its name)
    return _open_local(str(staged_copy), shown, threads=threads, identity=staged_copy.name, release=stack.close)


@contextmanager
def utf8_alias(name: str) -> Iterator[str]:
    """``name``, or where it holds bytes that are not UTF-8 (surrogate escapes, which decord
    cannot pass to FFmpeg) a symbolic link to it with a UTF-8 name, for as long as the block
    runs: FFmpeg opens the file once, so the link can go as soon as the reader exists."""
    if is_utf8(name):
        yield name
        return
    with tempfile.TemporaryDirectory(prefix="maskjobs-") as tmp:
        ext = os.path.splitext(os.fsencode(name))[1]
        alias = os.path.join(tmp, "video" + (ext.decode() if ext.isascii() else ""))
        os.symlink(os.path.abspath(os.fsencode(name)), alias)
        yield alias
