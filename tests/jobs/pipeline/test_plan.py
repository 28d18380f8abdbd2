"""Shard planning (``jobs.pipeline.plan``) on hand-built ``VideoInfo``s: no video, no Ray.

The property every plan must have: each sampled frame of each video lands in exactly one
shard, and a rerun that passes the committed ranges plans only the frames not committed yet.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest

from jobs.config import SamplingConfig
from jobs.pipeline.plan import Segment, Shard, plan_shards, sample_frames, split_pack
from jobs.video import VideoInfo


def _info(frames: int, *, fps: float = 25.0, gop: int | None = None, keyframes: tuple[int, ...] | None = None) -> VideoInfo:
    """A probe's result for a ``frames``-frame video with a keyframe every ``gop`` frames (or
    the given ``keyframes``; none listed when both are None, as some containers do)."""
    if keyframes is None:
        keyframes = tuple(range(0, frames, gop)) if gop else ()
    return VideoInfo(
        frames_total=frames, fps=fps, duration_s=frames / fps if fps > 0 else 0.0, width=640, height=360,
        codec="h264", keyframes=keyframes,
    )


Videos = list[tuple[str, str, VideoInfo]]


def _videos(**infos: VideoInfo) -> Videos:
    return [(vid, f"/videos/{vid}.mp4", info) for vid, info in infos.items()]


def _planned(shards: list[Shard]) -> Counter[tuple[str, int]]:
    """How many times each (video, frame) was planned."""
    return Counter((seg.video, frame) for shard in shards for seg in shard.segments for frame in seg.frames)


def _sampled(videos: Videos, sampling: SamplingConfig) -> set[tuple[str, int]]:
    return {(vid, int(f)) for vid, _, info in videos for f in sample_frames(info, sampling)}


def _ranges(shards: list[Shard]) -> dict[str, list[tuple[int, int]]]:
    """What committing ``shards`` records: each segment's ``(first, last)`` frame, per video."""
    out: dict[str, list[tuple[int, int]]] = {}
    for shard in shards:
        for seg in shard.segments:
            out.setdefault(seg.video, []).append((seg.frames[0], seg.frames[-1]))
    return out


def _assert_well_formed(shards: list[Shard]) -> None:
    """Shard ids unique, segments non-empty with ascending frames, paths carried over."""
    assert len({s.shard_id for s in shards}) == len(shards)
    for shard in shards:
        assert shard.segments and shard.num_frames == sum(len(s.frames) for s in shard.segments)
        for seg in shard.segments:
            assert seg.frames and list(seg.frames) == sorted(set(seg.frames))
            assert seg.path == f"/videos/{seg.video}.mp4"


@dataclass(frozen=True)
class Shape:
    """A set of videos and planning settings."""

    videos: Videos
    sampling: SamplingConfig
    shard_frames: int
    pack_frames: int


SHAPES = {
    "one long video, a keyframe every 40": Shape(_videos(a=_info(1000, gop=40)), SamplingConfig(), 100, 50),
    "one long video, no keyframes listed": Shape(_videos(a=_info(1000)), SamplingConfig(), 128, 64),
    "irregular keyframes": Shape(
        _videos(a=_info(900, keyframes=(0, 7, 250, 251, 400, 777, 899))), SamplingConfig(), 100, 10,
    ),
    "keyframes end early": Shape(_videos(a=_info(1000, keyframes=(0, 100, 200))), SamplingConfig(), 50, 10),
    "many short videos packed": Shape(
        _videos(**{f"clip{k}": _info(30 + k) for k in range(9)}), SamplingConfig(), 1024, 100,
    ),
    "long and short mixed, stride 3": Shape(
        _videos(long=_info(2000, gop=50), mid=_info(700, gop=25), short=_info(60), tiny=_info(1), empty=_info(0)),
        SamplingConfig(stride=3), 120, 90,
    ),
    "fps sampling of a 29.97 fps video": Shape(
        _videos(a=_info(3000, fps=29.97, gop=60), b=_info(100, fps=29.97)), SamplingConfig(fps=7.5), 64, 32,
    ),
    "no packing": Shape(_videos(**{f"c{k}": _info(20, gop=10) for k in range(4)}), SamplingConfig(), 16, 0),
    "everything packs": Shape(_videos(**{f"c{k}": _info(50, gop=10) for k in range(5)}), SamplingConfig(), 16, 10_000),
}


def _plan(shape: Shape, committed: dict[str, list[tuple[int, int]]] | None = None, **overrides: int) -> list[Shard]:
    kwargs = {"shard_frames": shape.shard_frames, "pack_frames": shape.pack_frames, **overrides}
    return plan_shards(shape.videos, shape.sampling, committed=committed, **kwargs)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_sampled_frame_is_planned_exactly_once(name: str) -> None:
    shape = SHAPES[name]
    shards = _plan(shape)
    _assert_well_formed(shards)
    planned = _planned(shards)
    assert set(planned) == _sampled(shape.videos, shape.sampling)
    assert set(planned.values()) <= {1}
    assert _plan(shape) == shards  # deterministic, ids included


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_long_videos_are_cut_at_keyframes_and_packs_come_last(name: str) -> None:
    """A video of ``pack_frames`` sampled frames or more gets shards of its own, each but its
    last of at least ``shard_frames`` frames, each but its first starting at the first sampled
    frame at or after a keyframe; they come longest first, then the packs."""
    shape = SHAPES[name]
    shards = _plan(shape)
    long = {vid for vid, _, info in shape.videos if len(sample_frames(info, shape.sampling)) >= shape.pack_frames}
    singles = 0
    for vid, _, info in shape.videos:
        if vid not in long:
            continue
        frames = sample_frames(info, shape.sampling)
        own = sorted((s for s in shards if s.videos == (vid,)), key=lambda s: s.segments[0].frames[0])
        singles += len(own)
        assert own[0].segments[0].frames[0] == frames[0]
        assert all(s.num_frames >= shape.shard_frames for s in own[:-1])
        for prev, shard in zip(own, own[1:]):
            last, first = prev.segments[0].frames[-1], shard.segments[0].frames[0]
            assert int(frames[np.searchsorted(frames, first) - 1]) == last  # nothing skipped in between
            if info.keyframes:
                assert any(last < k <= first for k in info.keyframes), (vid, last, first)
    sizes = [s.num_frames for s in shards[:singles]]
    assert sizes == sorted(sizes, reverse=True)
    assert not any(set(s.videos) & long for s in shards[singles:])  # the rest are the packs of short videos


def test_shard_sizes_with_regular_keyframes() -> None:
    """Every shard but a video's last has at least ``shard_frames`` frames and ends at the
    keyframe after that; the last holds at most 1.5x ``shard_frames`` (no sliver at the end)."""
    shards = plan_shards(_videos(a=_info(1000, gop=40)), SamplingConfig(), shard_frames=100, pack_frames=50)
    by_start = sorted(shards, key=lambda s: s.segments[0].frames[0])
    sizes = [s.num_frames for s in by_start]
    assert all(s == 120 for s in sizes[:-1])  # 100 frames, then on to the next keyframe (a multiple of 40)
    assert sizes[-1] <= 150 and sum(sizes) == 1000
    assert [s.segments[0].frames[0] for s in by_start] == list(range(0, 1000, 120))


def test_without_keyframes_runs_are_cut_at_exactly_shard_frames() -> None:
    shards = plan_shards(_videos(a=_info(1000)), SamplingConfig(), shard_frames=128, pack_frames=64)
    assert [s.num_frames for s in shards] == [128] * 7 + [104]  # the rest: over half a shard, so not merged


def test_when_keyframes_end_the_rest_is_one_shard() -> None:
    shards = plan_shards(_videos(a=_info(1000, keyframes=(0, 100, 200))), SamplingConfig(), shard_frames=50, pack_frames=10)
    starts = sorted(s.segments[0].frames[0] for s in shards)
    assert starts == [0, 100, 200]  # no keyframe after 250: frames 200..999 cannot be cut
    assert max(s.num_frames for s in shards) == 800 and shards[0].num_frames == 800  # the longest first


def test_short_videos_are_packed_up_to_pack_frames_in_input_order() -> None:
    videos = _videos(**{f"clip{k}": _info(30) for k in range(7)})
    shards = plan_shards(videos, SamplingConfig(), shard_frames=1024, pack_frames=100)
    assert [s.videos for s in shards] == [
        ("clip0", "clip1", "clip2"), ("clip3", "clip4", "clip5"), ("clip6",),
    ]
    assert all(s.num_frames <= 100 for s in shards)


def test_a_video_of_pack_frames_or_more_is_not_packed() -> None:
    videos = _videos(a=_info(10), b=_info(40), c=_info(30), d=_info(1))
    shards = plan_shards(videos, SamplingConfig(), shard_frames=1024, pack_frames=40)
    assert [s.videos for s in shards] == [("b",), ("a", "c"), ("d",)]  # singles first; a pack fills up to 40


@pytest.mark.parametrize(
    ("fps", "sampling", "expected"),
    [
        (30.0, SamplingConfig(), list(range(30))),
        (30.0, SamplingConfig(stride=4), list(range(0, 30, 4))),
        (30.0, SamplingConfig(fps=10), list(range(0, 30, 3))),
        (25.0, SamplingConfig(fps=10), [0, 2, 5, 7, 10, 12, 15, 17, 20, 22, 25, 27]),  # every 2.5 frames, floored
        (10.0, SamplingConfig(fps=30), list(range(30))),  # never more than every frame
        (0.0, SamplingConfig(fps=5), list(range(30))),  # rate unknown: the stride (1 with fps) applies
    ],
)
def test_sample_frames(fps: float, sampling: SamplingConfig, expected: list[int]) -> None:
    got = sample_frames(_info(30, fps=fps), sampling)
    assert got.dtype == np.int64 and got.tolist() == expected


def test_fps_sampling_keeps_the_rate_over_a_long_video() -> None:
    info = _info(36_000, fps=29.97)  # 20 minutes
    got = sample_frames(info, SamplingConfig(fps=2))
    assert len(got) == pytest.approx(info.duration_s * 2, abs=1)
    assert np.all(np.diff(got) >= 14) and np.all(np.diff(got) <= 15)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_resume_plans_only_what_is_not_committed(name: str) -> None:
    shape = SHAPES[name]
    first = _plan(shape)
    done = first[::2]  # every other shard committed before the crash
    rest = _plan(shape, _ranges(done))
    _assert_well_formed(rest)
    assert not set(_planned(rest)) & set(_planned(done))
    both = _planned(done) + _planned(rest)
    assert set(both) == _sampled(shape.videos, shape.sampling) and set(both.values()) <= {1}
    assert _plan(shape, _ranges(first)) == []  # all committed: nothing to do


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_resume_with_other_shard_sizes_still_covers_every_frame_once(name: str) -> None:
    """The committed ranges are per segment, not per shard: a rerun with other planning
    settings plans exactly the frames the earlier run did not commit."""
    shape = SHAPES[name]
    done = _plan(shape)[1::3]
    rest = _plan(shape, _ranges(done), shard_frames=37, pack_frames=23)
    both = _planned(done) + _planned(rest)
    assert set(both) == _sampled(shape.videos, shape.sampling) and set(both.values()) <= {1}


def test_a_hole_in_the_committed_ranges_is_planned_alone() -> None:
    videos = _videos(a=_info(1000, gop=40))
    shards = plan_shards(videos, SamplingConfig(), shard_frames=100, pack_frames=50,
                         committed={"a": [(0, 399), (480, 999)]})
    assert [(s.segments[0].frames[0], s.segments[0].frames[-1]) for s in shards] == [(400, 479)]
    shards = plan_shards(videos, SamplingConfig(), shard_frames=100, pack_frames=50,
                         committed={"a": [(0, 399), (470, 999)]})
    assert shards[0].videos == ("a",) and shards[0].num_frames == 70  # under pack_frames: a pack of one


def test_committed_ranges_of_another_video_change_nothing() -> None:
    videos = _videos(a=_info(300, gop=30))
    assert plan_shards(videos, SamplingConfig(), shard_frames=100, pack_frames=50, committed={"b": [(0, 299)]}) == \
        plan_shards(videos, SamplingConfig(), shard_frames=100, pack_frames=50)


def test_shard_ids_depend_on_the_frames_and_end_with_the_first_frame() -> None:
    shards = plan_shards(_videos(a=_info(1000, gop=40)), SamplingConfig(), shard_frames=100, pack_frames=50)
    for shard in shards:
        assert shard.shard_id.endswith(f"-{shard.segments[0].frames[0]:08d}")
    other = plan_shards(_videos(b=_info(1000, gop=40)), SamplingConfig(), shard_frames=100, pack_frames=50)
    assert not {s.shard_id for s in shards} & {s.shard_id for s in other}  # the video id is in the hash


def test_split_pack_gives_one_shard_per_video_as_a_plan_of_that_video_would() -> None:
    videos = _videos(a=_info(10), b=_info(20), c=_info(30))
    (pack,) = plan_shards(videos, SamplingConfig(), shard_frames=1024, pack_frames=100)
    parts = split_pack(pack)
    assert [p.segments for p in parts] == [(seg,) for seg in pack.segments]
    for part, (vid, path, info) in zip(parts, videos):
        (alone,) = plan_shards([(vid, path, info)], SamplingConfig(), shard_frames=1024, pack_frames=100)
        assert part == alone  # same id: its commit is recognised whichever way it was planned
    assert len({p.shard_id for p in parts} | {pack.shard_id}) == 4


def test_split_pack_of_a_single_video_shard_is_that_shard() -> None:
    (shard,) = plan_shards(_videos(a=_info(300)), SamplingConfig(), shard_frames=1024, pack_frames=100)
    assert split_pack(shard) == [shard]
    seg = Segment("x", "/x.mp4", (3, 4, 5))
    assert split_pack(Shard("whatever", (seg,)))[0].segments == (seg,)


# --- keyframe sampling, and shards cut by the frames they decode --------------------------------


def test_keyframes_sampling_is_the_listed_keyframes() -> None:
    info = _info(1000, keyframes=(0, 250, 500, 750, 1200))  # one past the end is left out
    assert sample_frames(info, SamplingConfig(keyframes=True)).tolist() == [0, 250, 500, 750]
    assert sample_frames(_info(10), SamplingConfig(keyframes=True)).tolist() == [0]  # none listed: the first frame


def test_span_frames_cuts_a_sampled_long_video_into_several_shards() -> None:
    """At every 15th frame a 20,000-frame video has 1,334 samples: without a span limit one
    shard (one decoder) decodes all 20,000 frames; with ``span_frames`` each shard decodes
    about that many, starting at a keyframe, and every sample is planned exactly once."""
    videos = _videos(a=_info(20000, gop=300))
    sampling = SamplingConfig(stride=15)
    one = plan_shards(videos, sampling, shard_frames=1024, pack_frames=512)
    assert len(one) == 1
    cut = plan_shards(videos, sampling, shard_frames=1024, pack_frames=512, span_frames=2048)
    _assert_well_formed(cut)
    assert len(cut) >= 8
    assert _planned(cut) == Counter(_sampled(videos, sampling))
    for shard in cut:
        seg = shard.segments[0]
        assert seg.frames[-1] - seg.frames[0] + 1 <= 2048 * 1.5 + 300
    starts = sorted(s.segments[0].frames[0] for s in cut)
    assert all(f % 300 < 15 for f in starts[1:])  # the first sample at or after a keyframe


def test_span_frames_keeps_a_long_sampled_run_out_of_packs() -> None:
    videos = _videos(a=_info(9000, gop=300), b=_info(9000, gop=300))
    cut = plan_shards(videos, SamplingConfig(stride=30), shard_frames=1024, pack_frames=512, span_frames=2048)
    assert all(len(s.segments) == 1 for s in cut) and len(cut) >= 6
    assert _planned(cut) == Counter(_sampled(videos, SamplingConfig(stride=30)))


def test_decoded_frames_counts_skips_and_seeks() -> None:
    from jobs.pipeline.plan import decoded_frames

    shard = Shard("s", (Segment("a", "/videos/a.mp4", (0, 15, 30, 600, 615)),))
    decoded, seeks = decoded_frames(shard, {"a": (0, 300, 600)}, seek_each=False)
    # 0 (1) + 15 + 15, then a seek to 600 (1 frame), then 15
    assert (decoded, seeks) == (1 + 15 + 15 + 1 + 15, 1)
    assert decoded_frames(shard, {"a": (0, 300, 600)}, seek_each=True) == (5, 5)


def test_keyframe_sampling_gets_small_shards_so_several_decoders_share_the_work() -> None:
    from jobs.pipeline.plan import shard_sizes

    videos = _videos(a=_info(6750, gop=300), b=_info(6750, gop=300))  # 23 keyframes each
    sampling = SamplingConfig(keyframes=True)
    sizes = shard_sizes(sampling, shard_frames=1024, pack_frames=512)
    assert sizes == {"shard_frames": 128, "pack_frames": 32, "span_frames": None}
    shards = plan_shards(videos, sampling, **sizes)
    assert len(shards) == 2 and _planned(shards) == Counter(_sampled(videos, sampling))
    assert plan_shards(videos, sampling, shard_frames=1024, pack_frames=512).__len__() == 1  # one pack: one decoder
    every = shard_sizes(SamplingConfig(stride=15), shard_frames=1024, pack_frames=512)
    assert every == {"shard_frames": 1024, "pack_frames": 512, "span_frames": 2048}
