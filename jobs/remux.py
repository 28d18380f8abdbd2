"""MPEG-TS read through a Matroska remux, because decord misreads it.

decord's reader puts out the wrong pixels for MPEG transport streams: on H.264 in ``.ts`` (what
NVRs, cameras and HLS recorders write) frame N read from the start is the picture shown at frame
N + one GOP, and the last GOP is the final picture repeated ("frames corrupted and recovered from
nearest frames"). Every row of such a video would describe another moment. The same stream
copied packet for packet into Matroska (no re-encoding: ~30 ms for 30 s of 1080p) is read right,
bit for bit the frames FFmpeg (OpenCV, PyAV) decodes from the ``.ts``, with its frame count,
keyframes, rate and timestamps (from 0).

So :func:`jobs.video.open_video` hands decord that copy, made once per node in the stage cache
(:func:`jobs.stage.remuxed`, cleared at the end of the job like a remote video's copy). A
transport stream is recognised by its bytes (a 0x47 sync byte every 188 bytes, or every 192
in M2TS's timestamped packets), not by its name.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from jobs.errors import one_line

logger = logging.getLogger(__name__)

_SYNC = 0x47
_PACKETS = 4  # sync bytes checked: a random file passes with odds of 256**-4


def is_mpegts(path: str | Path) -> bool:
    """Whether the local file ``path`` starts as an MPEG transport stream (188-byte packets, or
    192-byte M2TS packets); False for anything unreadable and anything but a regular file (a
    FIFO is never opened: that would wait for a writer, and reading would consume it)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            head = f.read(192 * _PACKETS)
    except (OSError, ValueError):
        return False
    for size, offset in ((188, 0), (192, 4)):
        if len(head) >= offset + size * (_PACKETS - 1) + 1 and all(
            head[offset + size * i] == _SYNC for i in range(_PACKETS)
        ):
            return True
    return False


class RemuxError(RuntimeError):
    """The stream could not be copied into Matroska; the message says why in one line."""


def remux_to_matroska(src: str | Path, dst: str | Path) -> int:
    """Copies ``src``'s video stream (the one FFmpeg picks as best, as decord and OpenCV do)
    packet for packet into the Matroska file ``dst``; returns the packets copied.

    A stream damaged part way (a recording cut mid-write) keeps the packets before the damage,
    with a warning; decoding then stops there as it would in the original. Raises
    :class:`RemuxError` when nothing can be copied."""
    import av

    copied = 0
    try:
        with av.open(str(src)) as inp:
            stream = inp.streams.best("video")
            if stream is None:
                raise RemuxError("no video stream")
            with av.open(str(dst), "w", format="matroska") as out:
                target = out.add_stream_from_template(stream)
                try:
                    for packet in inp.demux(stream):
                        if packet.dts is None or packet.size == 0:  # the demuxer's flush packet
                            continue
                        packet.stream = target
                        out.mux(packet)
                        copied += 1
                except (av.FFmpegError, OSError) as exc:
                    if not copied:
                        raise
                    logger.warning("%s: transport stream damaged after %d packets (%s); the rest is not read",
                                   src, copied, one_line(exc))
    except RemuxError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise RemuxError(f"cannot copy the transport stream for decoding ({one_line(exc)})") from None
    if not copied:
        raise RemuxError("the transport stream holds no video packets")
    return copied
