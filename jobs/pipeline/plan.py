"""Planning: which frames to sample, and how to cut them into shards.

A long video is cut into shards of about ``shard_frames`` sampled frames, each starting
at a keyframe where the container lists them, so shards decode independently and one
long video keeps every worker busy. Short videos are packed into one shard up to
``pack_frames`` so that tiny tasks do not dominate. Each committed shard records the frame
range of each of its segments, so a rerun plans only the sampled frames not committed
yet, whatever shards the earlier run used: every frame ends up committed exactly once.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass

import numpy as np

from jobs.config import SamplingConfig
from jobs.video import ProbedVideo, VideoInfo
from sinks.layout import SegmentRange


@dataclass(frozen=True)
class Segment:
    """Sampled frames ``frames`` (source indices, ascending) of one video."""

    video: str
    path: str
    frames: tuple[int, ...]

    @property
    def span(self) -> SegmentRange:
        """What a committed shard records of this segment: its video and first and last frame."""
        return SegmentRange(self.video, self.frames[0], self.frames[-1])


@dataclass(frozen=True)
class Shard:
    """One unit of work and of commit: segments decoded in order by one task."""

    shard_id: str
    segments: tuple[Segment, ...]

    @property
    def num_frames(self) -> int:
        return sum(len(s.frames) for s in self.segments)

    @property
    def videos(self) -> tuple[str, ...]:
        return tuple(s.video for s in self.segments)


def sample_frames(info: VideoInfo, sampling: SamplingConfig) -> np.ndarray:
    """Source frame indices to process: every ``stride``-th, ``fps`` per second of video, or
    (``sampling.keyframes``) the keyframes the container lists (frame 0 where it lists none)."""
    total = info.frames_total
    if getattr(sampling, "keyframes", False):
        keys = np.unique(np.asarray(info.keyframes, dtype=np.int64))
        keys = keys[(keys >= 0) & (keys < total)]
        return keys if len(keys) else np.zeros(min(1, total), np.int64)
    if sampling.fps is None or info.fps <= 0:
        return np.arange(0, total, sampling.stride, dtype=np.int64)
    step = info.fps / sampling.fps
    if step <= 1:
        return np.arange(total, dtype=np.int64)
    idx = np.floor(np.arange(0, total, step) + 1e-9).astype(np.int64)
    return np.unique(idx[idx < total])


def _cut_points(frames: np.ndarray, keyframes: tuple[int, ...], shard_frames: int, span_frames: int | None = None) -> list[int]:
    """Positions in ``frames`` where a new shard starts (a keyframe at or after each target):
    every ``shard_frames`` sampled frames, and with ``span_frames`` also every ``span_frames``
    source frames (the frames a sampled shard decodes), whichever comes first."""
    cuts = [0]
    keys = sorted(keyframes)
    pos = 0
    while len(frames) - pos > shard_frames * 1.5 or (
        span_frames is not None and int(frames[-1]) - int(frames[pos]) + 1 > span_frames * 1.5
    ):
        target = int(frames[pos + shard_frames]) if len(frames) - pos > shard_frames else int(frames[-1]) + 1
        if span_frames is not None:
            target = min(target, int(frames[pos]) + span_frames)
        if keys:
            k = bisect.bisect_left(keys, target)
            if k == len(keys):
                break
            target = keys[k]
        nxt = int(np.searchsorted(frames, target))
        if nxt <= pos or nxt >= len(frames):
            break
        cuts.append(nxt)
        pos = nxt
    return cuts


def _shard_id(segments: tuple[Segment, ...]) -> str:
    h = hashlib.sha256()
    for s in segments:
        h.update(f"{s.video}\0{s.frames[0]}\0{s.frames[-1]}\0{len(s.frames)}\n".encode())
    first = segments[0]
    return f"{h.hexdigest()[:16]}-{first.frames[0]:08d}"


def _runs(frames: np.ndarray, done: np.ndarray) -> list[np.ndarray]:
    """The not-``done`` frames, split into runs that are contiguous in the sampled order."""
    todo = np.flatnonzero(~done)
    if len(todo) == 0:
        return []
    breaks = np.flatnonzero(np.diff(todo) > 1) + 1
    return [frames[chunk] for chunk in np.split(todo, breaks)]


def _committed_mask(frames: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    done = np.zeros(len(frames), dtype=bool)
    for first, last in ranges:
        done |= (frames >= first) & (frames <= last)
    return done


def plan_shards(
    videos: list[ProbedVideo],
    sampling: SamplingConfig,
    *,
    shard_frames: int,
    pack_frames: int,
    committed: dict[str, list[tuple[int, int]]] | None = None,
    span_frames: int | None = None,
) -> list[Shard]:
    """Shards for the probed videos (``(video id, path, info)``), long ones first (they take longest).

    ``committed`` maps a video id to the ``(first, last)`` frame ranges already committed;
    their sampled frames are left out. ``span_frames`` (for sampling that decodes every
    frame: a stride or a rate) also cuts where a shard would decode more than that many
    source frames, and packs no run that does, so a long video sampled at 2 frames a
    second is decoded by several tasks at once rather than one.
    """
    committed = committed or {}
    singles: list[Shard] = []
    packs: list[Shard] = []
    pack: list[Segment] = []
    pack_size = 0
    for video, path, info in videos:
        frames = sample_frames(info, sampling)
        for run in _runs(frames, _committed_mask(frames, committed.get(video, []))):
            spans = span_frames is not None and int(run[-1]) - int(run[0]) + 1 > span_frames
            if len(run) < pack_frames and not spans:
                if pack and pack_size + len(run) > pack_frames:
                    packs.append(Shard(_shard_id(tuple(pack)), tuple(pack)))
                    pack, pack_size = [], 0
                pack.append(Segment(video, path, tuple(run.tolist())))
                pack_size += len(run)
                continue
            cuts = _cut_points(run, info.keyframes, shard_frames, span_frames) + [len(run)]
            for a, b in zip(cuts, cuts[1:]):
                seg = (Segment(video, path, tuple(run[a:b].tolist())),)
                singles.append(Shard(_shard_id(seg), seg))
    if pack:
        packs.append(Shard(_shard_id(tuple(pack)), tuple(pack)))
    return sorted(singles, key=lambda s: -s.num_frames) + packs


def split_pack(shard: Shard) -> list[Shard]:
    """A packed shard as one shard per video (to isolate a video that fails)."""
    return [Shard(_shard_id((seg,)), (seg,)) for seg in shard.segments]


KEYFRAME_SHARD_FRAMES = 128  # keyframes per shard: each costs a seek and a whole-picture decode
KEYFRAME_PACK_FRAMES = 32


def shard_sizes(sampling: SamplingConfig, *, shard_frames: int, pack_frames: int) -> dict[str, int | None]:
    """:func:`plan_shards`' ``shard_frames``, ``pack_frames`` and ``span_frames`` for the
    sampling: a stride or a rate decodes every frame, so shards are also cut every
    ``2 x shard_frames`` source frames; keyframes decode one frame each but a costly one (a
    seek, a whole picture), so their shards hold at most 128 of them and packs 32, which
    lets several decoders share even a few minutes of footage."""
    if sampling.keyframes:
        return {"shard_frames": min(shard_frames, KEYFRAME_SHARD_FRAMES),
                "pack_frames": min(pack_frames, KEYFRAME_PACK_FRAMES), "span_frames": None}
    return {"shard_frames": shard_frames, "pack_frames": pack_frames, "span_frames": 2 * shard_frames}


def decoded_frames(shard: Shard, keyframes: dict[str, tuple[int, ...]], *, seek_each: bool) -> tuple[int, int]:
    """``(decoded, seeks)``: about how many source frames decoding ``shard`` decodes, and how
    many of its frames it reaches by a seek (``keyframes``: each video's). ``seek_each``: every
    sampled frame is a keyframe reached by a seek (keyframe sampling)."""
    if seek_each:
        return shard.num_frames, shard.num_frames
    decoded = seeks = 0
    for seg in shard.segments:
        frames = np.asarray(seg.frames, np.int64)
        keys = np.asarray(keyframes.get(seg.video, ()), np.int64)
        gaps = np.diff(frames, prepend=-1)  # a segment is read from frame 0 on, as read_frames does
        if len(keys):
            # a keyframe past the frame after the last one read is reached by a seek
            # (read_frames' rule): only the frames from it count
            before = keys[np.maximum(np.searchsorted(keys, frames, side="right") - 1, 0)]
            jumped = before > frames - gaps + 1
            gaps = np.where(jumped, frames - before + 1, gaps)
            seeks += int(jumped.sum())
        decoded += int(gaps.sum())
    return decoded, seeks
