"""Sampled frames with the frames between them skipped where the codec allows (issue 18, item 2).

When a job samples (``--stride``, ``--fps``), decord decodes every frame between two kept ones
(:func:`jobs.video.read_frames`): it has no switch to leave non-reference frames undecoded.
libavcodec has one (``skip_frame = NONREF``), and PyAV sets it per packet: packets whose frame
is not wanted are decoded only if later frames refer to them (x264's non-reference B-frames, an
HEVC sub-layer's non-reference pictures, MPEG-4 part 2's B-VOPs are dropped unread), wanted
ones are decoded in full (MPEG-2's B-frames too). On H.264 High with B-frames at stride 15 (30 fps, a keyframe every
300) that is 0.55-0.65x decord's CPU time (about half the frames spanned are decoded), with the
same pixels (PyAV's wheel bundles the FFmpeg decord2's does, and RGB
conversion through swscale gives the same bytes as decord's filter graph).

decord stays the index: a frame's identity is decord's presentation-order index, matched on
PyAV's side by time (decord's per-frame timestamps, which subtract the stream's start time,
against ``(pts - start_time) * time_base`` within less than half the gap to the neighbouring
frames), never by a frame-rate formula. Anything this module cannot vouch for is read by decord
(:meth:`jobs.video.OpenVideo.read`) instead, never a wrong frame:

* frames that are not sparse (no gap of 2 or more): nothing to skip, so decord reads them,
  except in HEVC and MPEG-4 part 2 (:data:`REORDERED`) where reading them takes a seek, which
  decord gets wrong there (below): PyAV reads those, decoding every frame;
* containers other than MP4/MOV and Matroska/WebM (MPEG transport and program streams and AVI
  arrive here as their Matroska copies: :mod:`jobs.remux`; of an AVI's copy, only MPEG-4 part 2,
  whose timestamps the AVI demuxer puts back in presentation order), codecs other than H.264, HEVC and MPEG-4 part 2 (the others have
  no non-reference frames to skip, or were not checked), pixel formats other than 8-bit 4:2:0 and
  4:4:4 (10-bit RGB differs), a rotated video (decord turns it), an MP4 whose first timestamp decord
  puts below 0 (an edit list; one that hides frames arrives as its Matroska copy, read from the
  first frame shown: :mod:`jobs.remux`);
* a picture whose size is not the stream's first (recordings of two sizes joined): decord
  scales it to the first size, as OpenCV does, so decord reads it and the rest of the call;
* PyAV failing to open the file, or any PyAV error before the first frame is handed over;
* a wanted frame not where decord's index puts it (passed over, or the stream ended first):
  decord reads that frame and the rest of the call.

A decoding error after frames were handed over is :class:`~jobs.video.VideoReadError`
``decoding failed at frame N (...)``, N the wanted frame it failed at, as ``OpenVideo.read``
raises it, so a caller that reopens a damaged video at N (:class:`jobs.pipeline.decode._Frames`)
keeps every frame before the damage.

Keyframes alone (``--keyframes``) are read by PyAV in every codec of :data:`CODECS`: after a
seek, a wanted frame that is the last before the next seek has its packet decoded and the
decoder drained at once, where decord (and a decoder fed on) decodes the packets after it
until the reordering delay of B-frames lets it out: a 1080p keyframe 9.7 ms instead of
18-35 ms (one thread), the same bytes.

Frames are the ones decord puts out at those indices reading from the first frame on. decord's
own seeks miss them in open GOPs (x265's defaults, MPEG-4 part 2 with B-frames): its keyframe
indices count packets in decoding order, so ``read_frames`` there returns a frame 1-3 later, or
the first frame of the video, for frames shown before a keyframe. This module seeks to the
wanted frame's time instead and trusts frames only from the keyframe decoding started at.

The codec runs on one thread, as decord's reader in a decode task does: the task holds one CPU
(measured, stride 15 at 720p/1080p: two slice threads saved no CPU, two frame threads cost
15-20% more).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from jobs.remux import SOURCE_TAG
from jobs.video import OpenVideo, VideoReadError, keyframe_before, utf8_alias

logger = logging.getLogger(__name__)

CONTAINERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})  # PyAV's ``container.format.name``
CODECS = frozenset({"h264", "hevc", "mpeg4", "mpeg2video"})  # codecs with non-reference frames to skip
# codecs whose streams commonly show frames before their keyframe (x265's open GOPs, MPEG-4 part 2's
# B-frames, MPEG-2's open GOPs: DVRs, DVB, DVD): there decord's seeks miss (an MPEG-2 shard
# starting at a keyframe came out 2 frames off, every frame of it), so every read that seeks goes
# through PyAV, skipping or not
REORDERED = frozenset({"hevc", "mpeg4", "mpeg2video"})
PIXEL_FORMATS = frozenset({"yuv420p", "yuvj420p", "yuv444p"})  # RGB bit-identical to decord's
_MARGIN = 0.45  # a frame matches a timestamp within this share of the gap to its neighbours


@dataclass
class Tally:
    """What sampled reads did, summed over calls (a counter, mutated): ``decoded`` frames PyAV's
    decoder put out (skipped frames are not among them), ``yielded`` frames handed over from
    PyAV, ``fallbacks`` reads (or their remainders) handed to decord."""

    decoded: int = 0
    yielded: int = 0
    fallbacks: int = 0


class _Unsure(Exception):
    """PyAV's side cannot vouch for the next wanted frame; the message says why."""


class _DecordReads(Exception):
    """Nothing to skip, and decord's seeks are right for this codec: decord reads (no fallback)."""


def is_sparse(frames: np.ndarray, keyframes: np.ndarray) -> bool:
    """Whether skipping pays for ascending ``frames``: at least one gap of 2 or more between
    them (or one frame), strictly ascending, and not all keyframes (those decode alone)."""
    if len(frames) == 0 or (np.diff(frames) <= 0).any():
        return False
    if len(frames) > 1 and not (np.diff(frames) >= 2).any():
        return False
    return not np.isin(frames, keyframes).all()


def read_sampled(video: OpenVideo, frames: np.ndarray, *, tally: Tally | None = None) -> Iterator[np.ndarray]:
    """Yields the (H, W, 3) uint8 RGB frames at ascending indices ``frames`` (decord's): the
    frames and bytes decord puts out at those indices reading from the start, which are
    ``video.read(frames)``'s except where decord's own seek misses (module docstring).
    Non-reference frames between them are not decoded where PyAV can vouch for every frame's
    identity, else decord reads them. Each array is the caller's (a fresh one per frame).

    Raises :class:`~jobs.video.VideoReadError` as ``video.read`` does: a frame that fails to
    decode after others were handed over is ``decoding failed at frame N (...)``.
    """
    tally = tally if tally is not None else Tally()
    frames = np.asarray(frames, dtype=np.int64)
    if video.lead:  # the Matroska copy of an MP4 whose edit list hides frames: read in the copy's frames
        yield from _shifted(video, frames, tally)
        return
    try:
        keyframes = video.keyframes()
    except VideoReadError:
        keyframes = None  # decord raises its own error below
    if keyframes is None or not len(keyframes):
        yield from video.read(frames)
        return
    sparse = is_sparse(frames, keyframes)
    if not sparse and not _seeks(frames, keyframes):  # read from the first frame on: decord's order is right
        yield from video.read(frames)
        return
    # keyframes alone: a seek and one packet each, the decoder drained at once (decord feeds
    # it the packets after each keyframe until it puts the keyframe out: ~2x the CPU at 1080p)
    alone = bool(len(frames)) and bool(np.isin(frames, keyframes).all())
    done = 0
    why = ""
    try:
        plan = _Plan.of(video, frames, keyframes)
        for image in _decode(video.source, plan, tally, codecs=CODECS if sparse or alone else REORDERED):
            yield image
            done += 1
            tally.yielded += 1
    except _DecordReads:
        yield from video.read(frames[done:])
        return
    except _Unsure as exc:
        why = str(exc)
    except (*_av_errors(), VideoReadError, OSError, ValueError) as exc:
        if done:
            raise _failed(video, int(frames[done]), exc) from None
        why = f"PyAV: {type(exc).__name__}: {video.error_line(exc)}"
    if done == len(frames):
        return
    why = why or "past the end"
    (logger.debug if tally.fallbacks else logger.info)(
        "%s: frames from %d read by decord, not skipping non-reference frames (%s)", video.path, int(frames[done]), why
    )
    tally.fallbacks += 1
    yield from video.read(frames[done:])


def _shifted(video: OpenVideo, frames: np.ndarray, tally: Tally) -> Iterator[np.ndarray]:
    """:func:`read_sampled` over ``video.whole()`` (the copy's frames, the ``lead`` hidden ones
    first) at ``frames + video.lead``; an error names the video's frame it failed at."""
    done = 0
    try:
        for image in read_sampled(video.whole(), frames + video.lead, tally=tally):
            yield image
            done += 1
    except VideoReadError as exc:
        cause = re.sub(r"^decoding failed at frame \d+", f"decoding failed at frame {int(frames[done])}", exc.cause)
        raise VideoReadError(video.path, cause) from None


def _seek_mask(frames: np.ndarray, keyframes: np.ndarray) -> np.ndarray:
    """(n,) bool for ascending ``frames``: a keyframe lies after the frame before (or after the
    start, for the first), so reading frame j takes a seek (:func:`jobs.video.read_frames`' rule)."""
    return keyframe_before(keyframes, frames) > np.concatenate([[0], frames[:-1] + 1])


def _seeks(frames: np.ndarray, keyframes: np.ndarray) -> bool:
    """Whether decord would seek to read ascending ``frames``."""
    if len(frames) == 0 or (np.diff(frames) <= 0).any():
        return False
    return bool(_seek_mask(frames, keyframes).any())


def _failed(video: OpenVideo, frame: int, exc: BaseException) -> VideoReadError:
    """``decoding failed at frame N (...)``, naming the video's display name, not its staged copy."""
    return VideoReadError(video.path, f"decoding failed at frame {frame} ({video.error_line(exc)})")


def _av_errors() -> tuple[type[BaseException], ...]:
    """What PyAV raises (FFmpeg's errors), and ImportError: a node without PyAV reads with decord."""
    try:
        import av
    except ImportError:
        return (ImportError,)
    return (av.FFmpegError, ImportError)


@dataclass(frozen=True)
class _Plan:
    """Where the wanted frames are: ``frames`` (n,) decord indices, ``times`` (n,) their start
    times in seconds from the stream's start (decord's), ``margins`` (n,) how far a frame's time
    may be from it (less than half the gap to either neighbour), ``seeks`` (n,) bool: a keyframe
    lies between the frame before and frame j (decord's index; the rule of
    :func:`jobs.video.read_frames`), so seek rather than decode on."""

    frames: np.ndarray
    times: np.ndarray
    margins: np.ndarray
    seeks: np.ndarray

    @classmethod
    def of(cls, video: OpenVideo, frames: np.ndarray, keyframes: np.ndarray) -> _Plan:
        last = len(video) - 1
        frames = frames[frames <= last]  # the rest is decord's to report
        if not len(frames):
            raise _Unsure("past the end")
        seeks = _seek_mask(frames, keyframes)
        ask = np.unique(np.concatenate([[0], frames - 1, frames, frames + 1]).clip(0, last))
        stamps = video.timestamps(ask)
        at = dict(zip(ask.tolist(), stamps.tolist()))
        if not np.isfinite(stamps).all() or at[0] < 0:
            raise _Unsure("decord's timestamps are not usable here (an edit list or no timestamps)")
        times = np.array([at[f] for f in frames.tolist()])
        gaps = np.array([min((at[f] - at[f - 1]) if f > 0 else np.inf, (at[f + 1] - at[f]) if f < last else np.inf)
                         for f in frames.tolist()])
        if not (gaps > 0).all():
            raise _Unsure("decord's timestamps are not increasing")
        return cls(frames, times, np.where(np.isfinite(gaps), _MARGIN * gaps, 1.0), seeks)

    def last_before_seek(self, j: int, pts: int | None, start: int, base: float) -> bool:
        """Whether a packet at ``pts`` holds wanted frame ``j`` and nothing after it is read
        before a seek (``j`` is the last frame, or the next one is reached by a seek): then the
        decoder can be drained at once rather than fed the packets after it until it puts ``j``
        out (a decoder with B-frames holds a frame back for a few packets)."""
        if pts is None or (j + 1 < len(self.frames) and not self.seeks[j + 1]):
            return False
        return abs((pts - start) * base - self.times[j]) < self.margins[j]

    def wanted(self, t: float) -> bool:
        """Whether a packet or frame at ``t`` seconds is one of the wanted frames."""
        j = int(np.searchsorted(self.times, t))
        return any(0 <= i < len(self.times) and abs(t - self.times[i]) < self.margins[i] for i in (j - 1, j))


_RESEEKS = 4  # seeks further back for one frame (a frame displayed before the keyframe a seek found)
_LEADING = 32  # frames put out before a keyframe after a seek, at most (an open GOP's leading frames)


def _decode(path: str, plan: _Plan, tally: Tally, *, codecs: frozenset[str] = CODECS) -> Iterator[np.ndarray]:
    """The wanted frames of ``plan`` from ``path`` by PyAV; raises :class:`_Unsure` where it
    cannot vouch for one, :class:`_DecordReads` before anything when the codec is one of
    :data:`CODECS` but not of ``codecs`` (decord is right and quicker there), PyAV's errors
    as they come.

    After a seek (and at the start), frames are trusted from the first keyframe the decoder
    puts out: frames shown before it (an open GOP's leading frames, MPEG-4's B-frames) may
    refer to frames before the seek. A wanted frame among them is read by seeking further back,
    to before the keyframe's packet. decord's keyframe indices count packets in decoding order,
    so they only say when to seek, not where: the seek goes to the wanted frame's time.
    """
    import av

    with utf8_alias(path) as openable, av.open(openable) as container:
        if container.format.name not in CONTAINERS:
            raise _Unsure(f"container {container.format.name}")
        stream = container.streams.best("video")
        if stream is None:
            raise _Unsure("no video stream")
        ctx = stream.codec_context
        if ctx.name not in CODECS:
            raise _Unsure(f"codec {ctx.name}")
        if ctx.name not in codecs:
            raise _DecordReads(ctx.name)
        if container.metadata.get(SOURCE_TAG) == "avi" and ctx.name != "mpeg4":
            raise _Unsure(f"{ctx.name} copied from AVI: its timestamps are in decoding order")
        if stream.start_time is None:
            raise _Unsure("no start time")
        ctx.thread_count = 1  # the decode task holds one CPU
        ctx.thread_type = "NONE"
        start, base = int(stream.start_time), float(stream.time_base)
        size = (ctx.width, ctx.height)  # decord scales every picture to the stream's first size
        n, j = len(plan.frames), 0
        target: int | None = None  # pts to seek to, None: decode on
        if plan.seeks[0]:
            target = start + round((plan.times[0] + plan.margins[0] / 2) / base)
        tries = 0
        while j < n:
            if target is not None:
                container.seek(target, backward=True, any_frame=False, stream=stream)
            trusted, key_at, target, leading, drained = False, None, None, 0, False
            for packet in container.demux(stream):
                if key_at is None and packet.is_keyframe:
                    key_at = packet.dts if packet.dts is not None else packet.pts
                if drained:  # the packet of frame j went in, then the decoder was drained: j never came out
                    raise _Unsure(f"frame {int(plan.frames[j])} did not come out of its packet")
                if packet.pts is not None:
                    ctx.skip_frame = "DEFAULT" if plan.wanted((packet.pts - start) * base) else "NONREF"
                else:
                    ctx.skip_frame = "DEFAULT"
                frames = ctx.decode(packet)
                if plan.last_before_seek(j, packet.pts, start, base):
                    frames += ctx.decode(None)  # drain: frame j comes out now, not after more packets
                    drained = True
                for frame in frames:
                    tally.decoded += 1
                    if frame.pts is None:
                        raise _Unsure("a frame without a timestamp")
                    t = (frame.pts - start) * base
                    if not trusted:
                        if not frame.key_frame:
                            leading += 1
                            if leading > _LEADING:  # a stream whose decoder flags no keyframe
                                raise _Unsure("no keyframe put out after a seek")
                            continue  # shown before the keyframe decoding started at
                        trusted = True
                        if t >= plan.times[j] + plan.margins[j]:  # frame j is shown before that keyframe
                            tries += 1
                            if key_at is None or key_at <= start or tries > _RESEEKS:
                                raise _Unsure(f"no keyframe before frame {int(plan.frames[j])}")
                            target = key_at - 1
                            break
                    if t <= plan.times[j] - plan.margins[j]:
                        continue  # a frame before the wanted one
                    if t >= plan.times[j] + plan.margins[j]:
                        raise _Unsure(f"frame {int(plan.frames[j])} (at {plan.times[j]:.3f} s) is not where decord has it")
                    if (frame.width, frame.height) != size:  # recordings of two sizes joined
                        raise _Unsure(f"the picture size changes to {frame.width}x{frame.height}")
                    yield _rgb(frame)
                    j, tries = j + 1, 0
                    if j < n and plan.seeks[j]:
                        target = start + round((plan.times[j] + plan.margins[j] / 2) / base)
                    if j == n or target is not None:
                        break
                if j == n or target is not None:
                    break
            else:
                raise _Unsure(f"the stream ended before frame {int(plan.frames[j])}")


def _rgb(frame: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PyAV frame, as decord converts it; :class:`_Unsure` where that
    is not known to hold."""
    if frame.format.name not in PIXEL_FORMATS:
        raise _Unsure(f"pixel format {frame.format.name}")
    if frame.rotation:
        raise _Unsure(f"rotated {frame.rotation} degrees")
    return frame.to_ndarray(format="rgb24")
