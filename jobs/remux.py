"""MPEG transport and program streams, AVI, and MP4s that start mid-GOP or whose edit list hides
frames, read through a Matroska remux, because decord misreads them.

decord's reader puts out the wrong pixels for MPEG transport streams: on H.264 in ``.ts`` (what
NVRs, cameras and HLS recorders write) frame N read from the start is the picture shown at frame
N + one GOP, and the last GOP is the final picture repeated ("frames corrupted and recovered from
nearest frames"). Every row of such a video would describe another moment. The same stream
copied packet for packet into Matroska (no re-encoding: ~30 ms for 30 s of 1080p) is read right,
bit for bit the frames FFmpeg (OpenCV, PyAV) decodes from the ``.ts``, with its frame count,
keyframes, rate and timestamps (from 0).

MPEG program streams (``.mpg``, ``.vob``: DVR and DVD exports, MPEG-2 mostly) are not
reordered by PyAV's side (:mod:`jobs.sparse` vouches for MP4/MOV and Matroska only), and decord's
own seeks in them miss MPEG-2's open GOPs (a shard starting at a keyframe came out 2 frames off):
their Matroska copy is read by PyAV wherever a read seeks.

AVI (old DVRs: H.264 or MPEG-4 part 2 with B-frames) has no timestamps decord can read: every
frame's ``time_s`` came out as -3.07e17 s and the duration with it, and decord's seeks miss there
(a shard starting at a keyframe came out shifted, every frame of it; an MPEG-4 AVI read to its
end failed on its last frames). In the Matroska copy decord's timestamps are the frames' and its
seeks land. H.264 in AVI carries its timestamps in decoding order, which PyAV's side would
match frames by, so the copy says where it came from (:data:`SOURCE_TAG`) and :mod:`jobs.sparse`
leaves such a copy to decord.

An MP4 or MOV whose edit list hides its first frames (what a stream-copied trim writes:
``ffmpeg -ss 1.3 -i in.mp4 -c copy out.mp4``, a clip exported from a recording) keeps the
packets from the keyframe before the cut, which FFmpeg decodes and does not show. decord
misreads it two ways at once: it counts the hidden frames (240 where FFmpeg shows 201), reading
in order it puts out the shown ones and then the last picture again, a seek to frame N lands on
packet N (the hidden frames counted), and its timestamps start at -1.3 s. Its Matroska copy
holds every packet, hidden ones included, and is read consistently (decord's order and seeks
agree, times from 0): :class:`jobs.video.OpenVideo` reads it with the first
:func:`scan_start`'s hidden frames left out and their time subtracted, which gives FFmpeg's frames,
count and times. decord's first timestamp below 0 is what sends an MP4 to this check.

A recording that starts mid-GOP (a live capture, an export cut at a byte) holds packets before
its first keyframe, which no decoder shows and decord counts as frames: the copy leaves them
out (:class:`_Start`). An MP4 or Matroska file whose first keyframe is not decord's frame 0
goes through the copy for this.

Transport streams joined end to end (``cat a.ts b.ts``) restart their clock at the join; the
copy's timestamps run on through it (:class:`_Clock`), or it would end there.

So :func:`jobs.video.open_video` hands decord that copy, made once per node in the stage cache
(:func:`jobs.stage.remuxed`, cleared at the end of the job like a remote video's copy). A
stream is recognised by its bytes, not by its name: a transport stream by a 0x47 sync byte
every 188 bytes (or every 192 in M2TS's timestamped packets), a program stream by its pack
header (``00 00 01 BA``) at the start, an AVI by its RIFF header. An AVI that cannot be copied
is read as before (decord on the file, with a warning); a transport or program stream that
cannot be copied fails, as decord's frames of it would be wrong.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any, NamedTuple

from jobs.errors import one_line

logger = logging.getLogger(__name__)

_SYNC = 0x47
_PACKETS = 4  # sync bytes checked: a random file passes with odds of 256**-4
_PACK_HEADER = b"\x00\x00\x01\xba"  # an MPEG program stream's first bytes
_SHOWN_RUN = 16  # packets shown in a row after which no hidden one follows (B-frame reordering is shallower)
_SCAN_PACKETS = 4096  # the most packets :func:`scan_start` reads
_HOLD_BYTES = 256 << 20  # packets held while waiting for a stream's first keyframe (:class:`_Start`)
SOURCE_TAG = "MASKJOBS_REMUXED_FROM"  # the copy's container tag: the source's FFmpeg format name


def remux_kind(path: str | Path) -> str | None:
    """``"mpegts"``, ``"mpeg"`` (program stream) or ``"avi"`` where the local file ``path``
    starts as one, else None; None for anything unreadable and anything but a regular file (a
    FIFO is never opened: that would wait for a writer, and reading would consume it)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as f:
            head = f.read(192 * _PACKETS)
    except (OSError, ValueError):
        return None
    if head[:4] == _PACK_HEADER and len(head) >= 14:
        return "mpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    for size, offset in ((188, 0), (192, 4)):
        if len(head) >= offset + size * (_PACKETS - 1) + 1 and all(
            head[offset + size * i] == _SYNC for i in range(_PACKETS)
        ):
            return "mpegts"
    return None


class Start(NamedTuple):
    """What :func:`scan_start` found at the start of a video stream."""

    hidden: int  # frames an edit list hides that decode (kept in the copy; ``OpenVideo.lead``)
    dropped: int  # packets no decoder shows (:class:`_Start`; left out of the copy)


def scan_start(path: str | Path) -> Start:
    """What the start of ``path``'s video stream holds that decord misreads (both 0 where PyAV
    is missing or cannot read the file: decord's error, if any, is the one reported):

    * ``hidden``: frames an MP4/MOV edit list hides, packets FFmpeg reads to decode the first
      frame shown but does not show (flagged discard);
    * ``dropped``: packets no decoder shows (:class:`_Start`), an open GOP's leading frames
      where the file starts at its keyframe (``ffmpeg -i cut.ts -c copy cut.mp4`` of an open-GOP
      stream: 123 packets, FFmpeg shows 120; decord puts the first frame at -0.1 s).

    Both come first in decoding order, mixed with shown ones only as far as B-frames reorder,
    so the scan stops after :data:`_SHOWN_RUN` shown packets in a row."""
    try:
        import av
    except ImportError as exc:  # a node without PyAV reads the file as decord does
        logger.warning("%s: its start not read, PyAV is not installed (%s)", path, exc)
        return Start(0, 0)
    hidden = shown = seen = 0
    start = _Start()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.best("video")
            if stream is None:
                return Start(0, 0)
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                seen += 1
                for kept in start.admit(packet):
                    if kept.is_discard:
                        hidden, shown = hidden + 1, 0
                    else:
                        shown += 1
                if shown >= _SHOWN_RUN or seen >= _SCAN_PACKETS:
                    break
    except (av.FFmpegError, OSError, ValueError) as exc:
        logger.warning("%s: its start not read (%s)", path, one_line(exc))
        return Start(0, 0)
    return Start(hidden, start.dropped)


class _Start:
    """Leaves out the packets at a stream's start that no decoder shows: those before its first
    keyframe (a recording or segment that starts mid-GOP: a live capture, an NVR's export cut
    at a byte, an edit list's hidden frames of a GOP the cut left out) and those after it shown
    before it (an open GOP's leading pictures, x265's RASL: they refer to the GOP the file
    lacks). decord counts them as frames, fails to seek before its first keyframe and, reading
    in order, puts out the frames after them at their indices. FFmpeg (OpenCV, players) starts
    at the keyframe: on transport and program streams cut at 30% of their bytes (H.264 with
    closed and open GOPs, HEVC, MPEG-2), its frame count was the packets less these, exactly.

    Packets before a keyframe are held (up to :data:`_HOLD_BYTES`): a stream whose keyframes
    are not flagged gets them all back, as it did before. Leading pictures are looked for until
    :data:`_SHOWN_RUN` packets in a row are kept (a later restart of the clock, recordings
    joined, is not a leading picture)."""

    def __init__(self) -> None:
        self.key_pts: int | None = None  # the first keyframe's presentation time, once seen
        self.held: list[Any] = []
        self.held_bytes = 0
        self.dropped = 0
        self.kept_run = 0
        self.done = False  # nothing more to leave out

    def admit(self, packet: Any) -> list[Any]:
        """The packets to copy now (``packet``, held ones, or none), in decoding order."""
        if self.done:
            return [packet]
        if self.key_pts is None:
            if packet.is_keyframe and packet.pts is not None:
                self.key_pts, self.dropped, self.held = packet.pts, self.dropped + len(self.held), []
                return [packet]
            self.held.append(packet)
            self.held_bytes += packet.size
            if self.held_bytes <= _HOLD_BYTES:
                return []
            return self._give_up()
        if packet.pts is not None and packet.pts < self.key_pts:
            self.dropped += 1
            self.kept_run = 0
            return []
        self.kept_run += 1
        self.done = self.kept_run >= _SHOWN_RUN
        return [packet]

    def end(self) -> list[Any]:
        """At the stream's end: the packets still held (no keyframe came)."""
        return self._give_up() if self.key_pts is None else []

    def _give_up(self) -> list[Any]:
        held, self.held, self.done = self.held, [], True
        return held


class _Clock:
    """Timestamps that run on where a stream's go back: transport streams joined end to end
    (``cat a.ts b.ts``, the way MPEG-TS is concatenated; an NVR's export spanning a camera's
    restart) start again from their own clock, which Matroska cannot hold ("non-monotonic
    DTS"): the copy would end at the join and every frame after it would be lost. FFmpeg (OpenCV,
    players) decodes on through it. Each packet from a restart on is moved later by the same
    amount, so that its decoding time follows every presentation time before it by one frame:
    the frames keep their order and spacing, and the times after a join run on from before it.
    Forward jumps (a recording's gap) are kept."""

    def __init__(self) -> None:
        self.shift = 0  # added to every timestamp, in the stream's time base
        self.last_dts: int | None = None
        self.top = 0  # the latest presentation (or decoding) time put out so far
        self.step = 1  # the last gap between decoding times: a frame's duration
        self.restarts = 0

    def run_on(self, packet: Any) -> None:
        """Moves ``packet``'s timestamps by the shift, first raising the shift where its decoding
        time would go back (a packet without one, from Matroska, is only moved)."""
        if packet.dts is None:
            packet.pts += self.shift
            self.top = max(self.top, packet.pts)
            return
        dts = packet.dts + self.shift
        if self.last_dts is not None:
            if dts < self.last_dts:
                self.shift = self.top + self.step - packet.dts
                self.restarts += 1
                dts = packet.dts + self.shift
            elif dts > self.last_dts:
                self.step = dts - self.last_dts
        self.last_dts = dts
        if packet.pts is not None:
            packet.pts += self.shift
        packet.dts = dts
        self.top = max(self.top, dts, packet.pts if packet.pts is not None else dts)


class RemuxError(RuntimeError):
    """The stream could not be copied into Matroska; the message says why in one line."""


def remux_to_matroska(src: str | Path, dst: str | Path) -> int:
    """Copies ``src``'s video stream (the one FFmpeg picks as best, as decord and OpenCV do)
    packet for packet into the Matroska file ``dst``; returns the packets copied.

    A stream damaged part way (a recording cut mid-write) keeps the packets before the damage,
    with a warning; decoding then stops there as it would in the original. Raises
    :class:`RemuxError` when nothing can be copied."""
    try:
        import av
    except ImportError as exc:  # a node without PyAV
        raise RemuxError(f"cannot copy the stream for decoding: PyAV is not installed ({exc})") from None

    copied = 0
    try:
        with av.open(str(src)) as inp:
            stream = inp.streams.best("video")
            if stream is None:
                raise RemuxError("no video stream")
            with av.open(str(dst), "w", format="matroska") as out:
                out.metadata[SOURCE_TAG] = inp.format.name
                target = out.add_stream_from_template(stream)
                if stream.average_rate and not target.codec_context.framerate:
                    # written as the track's default duration: without it an AVI's copy has none,
                    # and its last frame ends where it starts (the video one frame short)
                    target.codec_context.framerate = stream.average_rate
                unstamped = 0
                start, clock = _Start(), _Clock()
                # Matroska stores presentation times only: its demuxer leaves most B-frame streams'
                # decoding times unset, which its muxer does not need
                pts_only = inp.format.name.startswith("matroska")

                def copy(packets: list[Any]) -> None:
                    nonlocal copied, unstamped
                    for packet in packets:
                        if packet.dts is None and not (pts_only and packet.pts is not None):
                            unstamped += 1  # Matroska cannot place it (FFmpeg stamps what it can)
                            continue
                        clock.run_on(packet)
                        packet.stream = target
                        out.mux(packet)
                        copied += 1

                try:
                    for packet in inp.demux(stream):
                        if packet.size:  # not the demuxer's flush packet
                            copy(start.admit(packet))
                    copy(start.end())
                except (av.FFmpegError, OSError) as exc:
                    if not copied:
                        raise
                    logger.warning("%s: stream damaged after %d packets (%s); the rest is not read",
                                   src, copied, one_line(exc))
                if unstamped:
                    logger.warning("%s: %d packets without a timestamp left out of its copy", src, unstamped)
                if start.dropped:
                    logger.info("%s: %d packets before its first keyframe or shown before it left out (no decoder "
                                "shows them)", src, start.dropped)
                if clock.restarts:
                    logger.info("%s: its timestamps start again %d times (recordings joined); its copy's run on",
                                src, clock.restarts)
    except RemuxError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise RemuxError(f"cannot copy the stream for decoding ({one_line(exc)})") from None
    if not copied:
        raise RemuxError("the stream holds no video packets")
    return copied
