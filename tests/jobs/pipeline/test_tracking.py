"""Tracking during the run: shards fed as they commit, in any order, give the ids the pass
after the run gives, and nothing else is ever used."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jobs.pipeline.records import DetectedBatch
from jobs.results.bytetrack import track_sequence
from jobs.pipeline.tracking import OnlineTracks
from jobs.results.render import VideoDetections

PARAMS = {"max_age": 5, "min_hits": 2}


def _walkers(frames: np.ndarray, seed: int) -> VideoDetections:
    """Three faces moving at their own speeds, one missing now and then, plus false detections,
    on the sampled ``frames``: boxes and scores as the sink stores them (float32 values)."""
    rng = np.random.default_rng(seed)
    counts, boxes, scores = [], [], []
    for f in frames.tolist():
        k = 0
        for p in range(3):
            if rng.random() < 0.1:
                continue
            cx, cy = 100 + (3 + p) * f % 1700, 200 + 250 * p
            boxes.append([cx - 30, cy - 30, cx + 30, cy + 30] + rng.normal(0, 2, 4))
            scores.append(rng.uniform(0.4, 1.0))
            k += 1
        if rng.random() < 0.2:
            c = rng.uniform(0, 1800, 2)
            boxes.append([c[0], c[1], c[0] + 25, c[1] + 25])
            scores.append(rng.uniform(0.7, 1.0))
            k += 1
        counts.append(k)
    n = len(frames)
    return VideoDetections(
        frames=frames.astype(np.int64), time_s=frames / 30.0, counts=np.array(counts, np.int64),
        boxes=np.array(boxes, np.float32).reshape(-1, 4).astype(np.float64), masked=np.zeros(len(scores), bool),
        scores=np.array(scores, np.float32).astype(np.float64), tracks=np.full(len(scores), -1, np.int64),
    ) if n else VideoDetections(*(np.zeros(0) for _ in range(7)))


def _batch(parts: list[tuple[str, VideoDetections, slice]]) -> DetectedBatch:
    """One committed batch of frame ranges of videos (a pack when there are several)."""
    video, frame, counts, boxes, scores = [], [], [], [], []
    for name, dets, rows in parts:
        offsets = dets.offsets
        a, b = offsets[rows.start], offsets[rows.stop]
        video += [name] * (rows.stop - rows.start)
        frame.append(dets.frames[rows])
        counts.append(dets.counts[rows])
        boxes.append(dets.boxes[a:b].astype(np.float32))
        scores.append(dets.scores[a:b].astype(np.float32))
    k = int(sum(len(s) for s in scores))
    return DetectedBatch(
        video=np.array(video, object), frame=np.concatenate(frame), time_s=np.concatenate(frame) / 30.0,
        counts=np.concatenate(counts).astype(np.int32), labels=np.zeros(k, np.int64),
        scores=np.concatenate(scores), boxes=np.concatenate(boxes), decode_cpu_s=np.zeros(len(video), np.float32),
        detect_cpu_s=np.zeros(len(video), np.float32),
    )


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]])
def test_shards_committed_in_any_order_give_the_ids_of_the_pass_after_the_run(order: list[int]) -> None:
    frames = np.arange(0, 1200, 3)  # sampled every 3rd frame
    dets = _walkers(frames, seed=sum(order))
    online = OnlineTracks({"a.mp4": frames}, PARAMS)
    cuts = [0, 90, 200, 330, len(frames)]
    shards = [[_batch([("a.mp4", dets, slice(a, b))])] for a, b in zip(cuts, cuts[1:])]
    for i in order:
        online.add(shards[i])
    ids = online.ids("a.mp4", dets)
    online.close()
    expected = track_sequence(dets.counts, dets.boxes, dets.scores, **PARAMS)
    assert expected.max() >= 3 and np.array_equal(ids, expected)
    assert online.used == ["a.mp4"]


def test_a_pack_of_videos_is_split_to_their_own_trackers() -> None:
    a, b = _walkers(np.arange(60), seed=1), _walkers(np.arange(0, 90, 2), seed=2)
    online = OnlineTracks({"a.mp4": a.frames, "b.mp4": b.frames}, PARAMS)
    online.add([_batch([("a.mp4", a, slice(0, 40))]), _batch([("a.mp4", a, slice(40, 60)), ("b.mp4", b, slice(0, 45))])])
    for name, dets in (("a.mp4", a), ("b.mp4", b)):
        assert np.array_equal(online.ids(name, dets), track_sequence(dets.counts, dets.boxes, dets.scores, **PARAMS))


def test_rows_the_run_did_not_see_are_tracked_after_it() -> None:
    """A resumed job (earlier rows committed by another run), a failed shard, other rows read
    back, another video: no ids from the run's tracker."""
    frames = np.arange(300)
    dets = _walkers(frames, seed=3)
    resumed = OnlineTracks({"a.mp4": frames[100:]}, PARAMS)  # this run plans only the rest
    resumed.add([_batch([("a.mp4", dets, slice(100, 300))])])
    assert resumed.ids("a.mp4", dets) is None

    gap = OnlineTracks({"a.mp4": frames}, PARAMS)  # the middle shard failed
    gap.add([_batch([("a.mp4", dets, slice(0, 100))])])
    gap.add([_batch([("a.mp4", dets, slice(200, 300))])])
    assert gap.ids("a.mp4", dets) is None

    whole = OnlineTracks({"a.mp4": frames}, PARAMS)
    whole.add([_batch([("a.mp4", dets, slice(0, 300))])])
    moved = dataclasses.replace(dets, boxes=dets.boxes + 1.0)  # not the rows it saw
    assert whole.ids("a.mp4", moved) is None
    assert whole.ids("b.mp4", dets) is None
    assert np.array_equal(whole.ids("a.mp4", dets), track_sequence(dets.counts, dets.boxes, dets.scores, **PARAMS))
    assert whole.used == ["a.mp4"]


def test_a_recording_cut_short_is_tracked_up_to_its_damage() -> None:
    """A damaged video commits the frames before the damage (a shorter shard): those are its
    rows, and the run's tracker saw exactly them."""
    frames = np.arange(200)
    dets = _walkers(frames, seed=4)
    online = OnlineTracks({"a.mp4": frames}, PARAMS)
    online.add([_batch([("a.mp4", dets, slice(0, 120))])])
    kept = VideoDetections(
        frames=dets.frames[:120], time_s=dets.time_s[:120], counts=dets.counts[:120],
        boxes=dets.boxes[: dets.offsets[120]], masked=dets.masked[: dets.offsets[120]],
        scores=dets.scores[: dets.offsets[120]], tracks=dets.tracks[: dets.offsets[120]],
    )
    assert np.array_equal(online.ids("a.mp4", kept), track_sequence(kept.counts, kept.boxes, kept.scores, **PARAMS))


def test_an_error_while_tracking_leaves_the_video_to_the_pass_after_the_run(caplog: pytest.LogCaptureFixture) -> None:
    frames = np.arange(50)
    dets = _walkers(frames, seed=5)
    online = OnlineTracks({"a.mp4": frames}, PARAMS)
    bad = _batch([("a.mp4", dets, slice(0, 50))])
    bad["counts"] = bad["counts"] + 1  # more detections counted than there are boxes
    with caplog.at_level("WARNING", logger="jobs.pipeline.tracking"):
        online.add([bad])
        online.add([_batch([("a.mp4", dets, slice(0, 50))])])  # too late: the video is left to the pass
        assert online.ids("a.mp4", dets) is None
    assert "tracking during the run stopped for ['a.mp4']" in caplog.text
