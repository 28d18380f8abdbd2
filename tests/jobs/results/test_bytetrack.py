"""The tracker on synthetic boxes with known motion (the video tests are in tests/jobs)."""

from __future__ import annotations

import numpy as np
import pytest

from detector.boxes import box_iou
from jobs.results.bytetrack import track_sequence
from jobs.results.bytetrack import NO_TRACK


def _box(cx: float, cy: float, size: float = 40.0) -> list[float]:
    return [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]


def _flatten(frames: list[list[tuple[list[float], float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts = np.array([len(f) for f in frames])
    boxes = np.array([b for f in frames for b, _ in f], np.float64).reshape(-1, 4)
    scores = np.array([s for f in frames for _, s in f], np.float64)
    return counts, boxes, scores


def _per_frame(ids: np.ndarray, counts: np.ndarray) -> list[list[int]]:
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


def test_box_iou_matches_hand_computed_values() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]], np.float64)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], np.float64)
    iou = box_iou(a, b)
    assert iou.shape == (2, 2)
    assert iou[0, 0] == pytest.approx(50 / 150)
    assert iou[0, 1] == 0 and iou[1, 0] == 0
    # buffered by 0.5: [0,0,10,10] -> [-5,-5,15,15] and [20,20,30,30] -> [15,15,35,35]: touch only
    assert box_iou(a[:1], b[1:], buffer=0.5)[0, 0] == 0
    assert box_iou(a[:1], b[1:], buffer=0.6)[0, 0] > 0


def test_two_people_moving_fast_in_opposite_directions_keep_their_ids() -> None:
    """Each moves 30 px per sampled frame (most of its 40 px width), on parallel paths."""
    frames = []
    for i in range(40):
        a = (_box(20 + 30 * i, 100), 0.9)
        b = (_box(1200 - 30 * i, 300), 0.95)
        frames.append([a, b] if i % 2 else [b, a])  # detection order must not matter
    counts, boxes, scores = _flatten(frames)
    ids = track_sequence(counts, boxes, scores)
    left_to_right = set(ids[boxes[:, 1] < 200].tolist())
    right_to_left = set(ids[boxes[:, 1] > 200].tolist())
    assert len(left_to_right) == len(right_to_left) == 1 and left_to_right | right_to_left == {1, 2}


def test_crossing_paths_keep_ids_by_their_velocity() -> None:
    """Two faces pass through each other; constant-velocity prediction keeps them apart."""
    frames = []
    for i in range(30):
        frames.append([(_box(100 + 20 * i, 200), 0.9), (_box(700 - 20 * i, 210), 0.9)])
    counts, boxes, scores = _flatten(frames)
    ids = _per_frame(track_sequence(counts, boxes, scores), counts)
    assert all(f == [1, 2] for f in ids), ids


def test_gap_shorter_than_max_age_keeps_the_track_longer_ends_it() -> None:
    def run(gap: int) -> np.ndarray:
        frames = [[(_box(100 + 5 * i, 100), 0.9)] if not (10 <= i < 10 + gap) else [] for i in range(30)]
        return track_sequence(*_flatten(frames), max_age=5)

    assert set(run(5)) == {1}
    assert set(run(6)) == {1, 2}


def test_low_score_detections_continue_a_track_but_do_not_start_one() -> None:
    frames = [[(_box(100 + 5 * i, 100), 0.9 if i < 5 else 0.55)] for i in range(20)]
    frames += [[(_box(600, 400), 0.55)] for _ in range(5)]  # a weak face alone: no track
    counts, boxes, scores = _flatten(frames)
    ids = track_sequence(counts, boxes, scores, high_score=0.7)
    assert ids[:20].tolist() == [1] * 20
    assert ids[20:].tolist() == [NO_TRACK] * 5


def test_a_one_frame_false_detection_gets_no_track() -> None:
    frames = [[(_box(100, 100), 0.9)] for _ in range(10)]
    frames[4].append((_box(500, 500), 0.95))
    counts, boxes, scores = _flatten(frames)
    ids = _per_frame(track_sequence(counts, boxes, scores, min_hits=2), counts)
    assert ids[4] == [1, NO_TRACK]
    assert track_sequence(counts, boxes, scores, min_hits=1)[5] == 2  # min_hits=1: every face is a track


def test_empty_and_inconsistent_input() -> None:
    assert track_sequence(np.zeros(3, np.int64), np.zeros((0, 4)), np.zeros(0)).shape == (0,)
    with pytest.raises(ValueError, match="counts sum to 2"):
        track_sequence(np.array([2]), np.zeros((1, 4)), np.zeros(1))


def test_ended_tracks_leave_the_working_set() -> None:
    """A frame's work follows the tracks alive, not every track born: hours of footage with
    false detections start thousands of tentative tracks, which end a frame later."""
    from jobs.results.bytetrack import ByteTracker

    rng = np.random.default_rng(0)
    tracker = ByteTracker(max_age=5)
    alive = []
    for i in range(2000):
        noise = [_box(*rng.uniform(50, 1850, 2), size=20.0) for _ in range(3)]  # never seen again
        tracker.update(np.array([_box(100 + i % 50, 100), *noise]), np.array([0.9, 0.8, 0.8, 0.8]))
        alive.append(len(tracker.tracks.alive))
    assert len(tracker.tracks) > 5000  # every false detection was born as a tentative track
    # the person and two frames' false detections (one that happens to overlap the next lives longer)
    assert max(alive) <= 10
