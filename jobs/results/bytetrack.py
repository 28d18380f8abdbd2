"""A small ByteTrack-style tracker in numpy: two-stage IoU matching, constant-velocity boxes.

Per sampled frame (ByteTrack, Zhang et al. 2022, without a Kalman filter):

1. confirmed tracks (seen recently, at most ``max_age`` sampled frames ago) are matched to
   the high-score detections (score >= ``high_score``) by IoU of their predicted boxes;
2. confirmed tracks still unmatched that were seen in the previous frame are matched to the
   low-score detections (IoU >= ``low_match_iou``): a face that scores low for a while
   (turned, blurred) keeps its track;
3. tentative tracks (fewer than ``min_hits`` matches) are matched to the high-score
   detections left; one that misses a frame is dropped;
4. every high-score detection left starts a tentative track.

A track's box is predicted with a constant velocity in (centre, size) measured over the
frames it was matched in; a detection is matched by the better IoU of that prediction and of
the track's last box (a face that stops or jitters is not lost to an overshooting prediction). IoU is taken between boxes enlarged by ``buffer`` times their size
on each side (the buffered IoU of C-BIoU), so a face that moves farther than its own width
between sampled frames (low sampling rates) still matches.

All boxes are ``(x1, y1, x2, y2)`` float arrays in source pixels.
"""

from __future__ import annotations

import logging

import numpy as np

from detector.boxes import box_iou, enlarge_boxes

logger = logging.getLogger(__name__)

NO_TRACK = -1


def _greedy_match(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs ``(row, col)`` taken in order of decreasing IoU, each row and column once."""
    rows, cols = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    pairs = []
    for r, c in zip(rows[order].tolist(), cols[order].tolist()):
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            pairs.append((r, c))
    return pairs


def _to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], axis=1)


def _to_xyxy(state: np.ndarray) -> np.ndarray:
    half = np.maximum(state[:, 2:], 1e-3) / 2
    return np.concatenate([state[:, :2] - half, state[:, :2] + half], axis=1)


class _Tracks:
    """Every track born so far, as parallel arrays (index = internal track number), grown by
    doubling; ``alive`` lists, ascending, the tracks not yet ended, so a frame's work follows
    the tracks alive, not every track born in the video (false detections start many)."""

    def __init__(self) -> None:
        self.state = np.zeros((16, 4))  # cx, cy, w, h at ``last``
        self.velocity = np.zeros((16, 4))  # per sampled frame
        self.last = np.zeros(16, np.int64)  # step last matched
        self.hits = np.zeros(16, np.int64)
        self.n = 0
        self.alive = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return self.n

    def add(self, boxes: np.ndarray, step: int) -> np.ndarray:
        first, n = self.n, len(boxes)
        if first + n > len(self.hits):
            size = max(2 * len(self.hits), first + n)
            for name in ("state", "velocity", "last", "hits"):
                old = getattr(self, name)
                grown = np.zeros((size, *old.shape[1:]), old.dtype)
                grown[:first] = old[:first]
                setattr(self, name, grown)
        idx = np.arange(first, first + n)
        self.state[idx] = _to_cxcywh(boxes)
        self.velocity[idx] = 0.0
        self.last[idx] = step
        self.hits[idx] = 1
        self.n = first + n
        self.alive = np.concatenate([self.alive, idx])
        return idx


class ByteTracker:
    """Online tracker over one video's sampled frames, fed in frame order with :meth:`update`.

    Args:
        high_score: detections scoring at least this are matched first and may start tracks.
        match_iou: least buffered IoU to match a high-score detection to a track.
        low_match_iou: least buffered IoU to match a low-score detection to a track.
        buffer: boxes are enlarged by this fraction of their size on each side before IoU.
        max_age: a confirmed track unmatched for more than this many sampled frames ends.
        min_hits: matches (sampled frames) a track needs to be confirmed; tracks that never
            are get no id (:data:`NO_TRACK`): a one-frame false detection is not a person.
        velocity_smoothing: weight of the newest measured velocity (0..1).
    """

    def __init__(
        self,
        *,
        high_score: float = 0.7,
        match_iou: float = 0.3,
        low_match_iou: float = 0.5,
        buffer: float = 0.3,
        max_age: int = 15,
        min_hits: int = 2,
        velocity_smoothing: float = 0.5,
    ) -> None:
        if max_age < 0 or min_hits < 1:
            raise ValueError("max_age must be >= 0 and min_hits >= 1")
        self.high_score = high_score
        self.match_iou = match_iou
        self.low_match_iou = low_match_iou
        self.buffer = buffer
        self.max_age = max_age
        self.min_hits = min_hits
        self.alpha = velocity_smoothing
        self.tracks = _Tracks()
        self.step = -1

    def _match(
        self, tracks: np.ndarray, buffered: np.ndarray, dets: np.ndarray, threshold: float
    ) -> list[tuple[int, int]]:
        """Matched ``(track number, detection index)`` pairs between two candidate sets
        (``buffered``: the frame's boxes, already enlarged by ``buffer``)."""
        if len(tracks) == 0 or len(dets) == 0:
            return []
        # the better of the predicted and the last seen box: motion, or a face that stopped or jittered
        t = self.tracks
        state = t.state[tracks]
        dt = (self.step - t.last[tracks])[:, None]
        candidates = _to_xyxy(np.concatenate([state + t.velocity[tracks] * dt, state]))
        both = box_iou(enlarge_boxes(candidates, self.buffer), buffered[dets])
        iou = np.maximum(both[: len(tracks)], both[len(tracks) :])
        return [(int(tracks[r]), int(dets[c])) for r, c in _greedy_match(iou, threshold)]

    def _apply(self, pairs: list[tuple[int, int]], boxes: np.ndarray, out: np.ndarray) -> None:
        if not pairs:
            return
        t = self.tracks
        idx, det = np.array(pairs, np.int64).T
        measured = _to_cxcywh(boxes[det])
        dt = (self.step - t.last[idx])[:, None]
        new_velocity = (measured - t.state[idx]) / np.maximum(dt, 1)
        second_match = t.hits[idx][:, None] == 1  # no velocity measured yet: take this one
        t.velocity[idx] = np.where(
            second_match, new_velocity, self.alpha * new_velocity + (1 - self.alpha) * t.velocity[idx]
        )
        t.state[idx] = measured
        t.last[idx] = self.step
        t.hits[idx] += 1
        out[det] = idx

    def update(self, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """One sampled frame: ``boxes`` (K, 4) x1, y1, x2, y2 and ``scores`` (K,).

        Returns (K,) int64 internal track numbers (:data:`NO_TRACK` for a low-score
        detection that matched nothing). Numbers are provisional until :meth:`final_ids`.
        """
        self.step += 1
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        out = np.full(len(scores), NO_TRACK, np.int64)
        t = self.tracks
        if len(t.alive):  # a track ends once unmatched too long; it never comes back
            age = self.step - t.last[t.alive]
            hits = t.hits[t.alive]
            t.alive = t.alive[(age <= self.max_age + 1) & ((hits >= self.min_hits) | (age <= 1))]
        if len(boxes) == 0:
            return out
        alive = t.alive
        sure = t.hits[alive] >= self.min_hits
        confirmed, tentative = alive[sure], alive[~sure]
        high_mask = scores >= self.high_score
        high, low = np.flatnonzero(high_mask), np.flatnonzero(~high_mask)
        buffered = enlarge_boxes(boxes, self.buffer)

        first = self._match(confirmed, buffered, high, self.match_iou)
        self._apply(first, boxes, out)
        if len(low) and len(confirmed):
            recent = confirmed[t.last[confirmed] == self.step - 1]  # matched a frame ago, not in this one
            self._apply(self._match(recent, buffered, low, self.low_match_iou), boxes, out)
        high_left = high[out[high] == NO_TRACK]
        self._apply(self._match(tentative, buffered, high_left, self.match_iou), boxes, out)
        born = high[out[high] == NO_TRACK]
        if len(born):
            out[born] = t.add(boxes[born], self.step)
        return out

    def update_frames(self, counts: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """:meth:`update` over consecutive sampled frames: ``counts`` (F,) detections per frame,
        ``boxes`` (K, 4) and ``scores`` (K,) frame after frame. Returns (K,) internal numbers."""
        numbers = np.full(len(scores), NO_TRACK, np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
        for a, b in zip(offsets[:-1], offsets[1:]):
            numbers[a:b] = self.update(boxes[a:b], scores[a:b])
        return numbers

    def final_ids(self, numbers: np.ndarray) -> np.ndarray:
        """Internal track numbers as final ids: confirmed tracks are numbered 1, 2, ... in
        order of birth; detections of tracks never confirmed get :data:`NO_TRACK`."""
        numbers = np.asarray(numbers, np.int64)
        confirmed = self.tracks.hits[: len(self.tracks)] >= self.min_hits
        ids = np.where(confirmed, np.cumsum(confirmed), NO_TRACK)
        return np.where(numbers >= 0, ids[np.maximum(numbers, 0)] if len(ids) else NO_TRACK, NO_TRACK)


def track_sequence(counts: np.ndarray, boxes: np.ndarray, scores: np.ndarray, **params: float) -> np.ndarray:
    """Tracks over one video's sampled frames, in frame order.

    Args:
        counts: (F,) detections per sampled frame.
        boxes: (K, 4) x1, y1, x2, y2 source pixels, frame after frame (K = counts.sum()).
        scores: (K,) detection scores.
        **params: keyword arguments of :class:`ByteTracker`.

    Returns:
        (K,) int64 track ids, 1, 2, ... in order of first appearance; :data:`NO_TRACK` (-1)
        for detections that belong to no confirmed track.
    """
    counts = np.asarray(counts, np.int64)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if counts.sum() != len(boxes) or len(boxes) != len(scores):
        raise ValueError(f"counts sum to {counts.sum()} but there are {len(boxes)} boxes and {len(scores)} scores")
    tracker = ByteTracker(**params)
    return tracker.final_ids(tracker.update_frames(counts, boxes, scores))
