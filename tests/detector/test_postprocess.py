from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.anchors import generate_anchors
from detector.box_coder import decode_boxes
from detector.detections import Detections
from detector.postprocess import batched_nms, postprocess
from detector.spec import SPECS


def _greedy_nms_reference(boxes: np.ndarray, scores: np.ndarray, conf: float, iou: float) -> list[int]:
    """AIZOO's single_class_non_max_suppression, loop for loop."""
    keep_idx = np.where(scores > conf)[0]
    b, s = boxes[keep_idx], scores[keep_idx]
    area = (b[:, 2] - b[:, 0] + 1e-3) * (b[:, 3] - b[:, 1] + 1e-3)
    idxs = np.argsort(s, kind="stable")[::-1].tolist()
    pick = []
    while idxs:
        i = idxs.pop(0)
        pick.append(i)
        rest = []
        for j in idxs:
            w = max(0.0, min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
            h = max(0.0, min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
            inter = w * h
            if inter / (area[i] + area[j] - inter) <= iou:
                rest.append(j)
        idxs = rest
    return sorted(keep_idx[pick].tolist())


@pytest.mark.parametrize("seed", range(12))
def test_nms_equals_greedy_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    xy = rng.uniform(0, 0.8, size=(n, 2))
    wh = rng.uniform(0.02, 0.3, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.uniform(0, 1, size=n).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    t = torch.from_numpy(boxes[order])[None]
    valid = torch.from_numpy(scores[order] > 0.5)[None]
    keep = batched_nms(t, valid, iou_threshold=0.4)[0].numpy()
    got = sorted(order[keep].tolist())
    assert got == _greedy_nms_reference(boxes, scores, 0.5, 0.4)


def test_postprocess_batch_matches_per_image_and_reference() -> None:
    spec = SPECS["aizoo-260"]
    anchors = generate_anchors(spec)
    rng = np.random.default_rng(7)
    loc = torch.from_numpy(rng.normal(0, 1, size=(3, spec.num_anchors, 4)).astype(np.float32))
    scores = torch.from_numpy(rng.beta(0.3, 3, size=(3, spec.num_anchors, 2)).astype(np.float32))
    sizes = [(640, 360), (100, 200), (1920, 1080)]
    batch = postprocess(loc, scores, anchors, sizes, score_threshold=0.6, iou_threshold=0.4)
    for i, (w, h) in enumerate(sizes):
        single = postprocess(loc[i : i + 1], scores[i : i + 1], anchors, [(w, h)], score_threshold=0.6, iou_threshold=0.4)[0]
        np.testing.assert_array_equal(batch[i].boxes, single.boxes)
        boxes = decode_boxes(loc[i], anchors).numpy()
        best = scores[i].max(-1).values.numpy()
        keep = _greedy_nms_reference(boxes, best, 0.6, 0.4)
        assert len(batch[i]) == len(keep) > 0
        expect = np.clip(boxes[keep] * [w, h, w, h], 0, [w, h, w, h])
        got = batch[i].boxes[np.argsort(np.argsort(-best[keep]))]
        np.testing.assert_allclose(np.sort(got, 0), np.sort(expect, 0), atol=1e-3)
        assert (batch[i].boxes[:, [0, 2]] <= w).all() and (batch[i].boxes >= 0).all()
        assert np.all(np.diff(batch[i].scores) <= 0)


def test_no_candidates_gives_empty() -> None:
    spec = SPECS["aizoo-260"]
    loc = torch.zeros(2, spec.num_anchors, 4)
    scores = torch.full((2, spec.num_anchors, 2), 0.1)
    out = postprocess(loc, scores, generate_anchors(spec), [(10, 10), (20, 20)])
    assert [len(d) for d in out] == [0, 0]


def test_detections_validate_shapes() -> None:
    with pytest.raises(ValueError):
        Detections(np.zeros((2, 3), np.float32), np.zeros(2, np.float32), np.zeros(2, np.int64))
    with pytest.raises(ValueError):
        Detections(np.zeros((1, 4), np.float32), np.zeros(1, np.float32), np.array([5]))


@pytest.mark.parametrize("seed", range(4))
def test_candidates_are_ordered_like_a_stable_sort_of_every_anchor(seed: int) -> None:
    """Only candidates are sorted; ties (here: scores on a 0.05 grid) go to the lower anchor."""
    from detector.postprocess import _candidates_by_score, best_class

    rng = np.random.default_rng(seed)
    scores = torch.from_numpy((np.round(rng.beta(0.3, 3, size=(5, 997, 2)) * 20) / 20).astype(np.float32))
    scores[1] = 0.1  # a frame without candidates
    best, labels = best_class(scores)
    ref_best, ref_labels = scores.max(dim=-1)
    assert torch.equal(best, ref_best) and torch.equal(labels, ref_labels)
    candidate = best > 0.5
    counts = candidate.sum(1)
    k = int(counts.max())
    order, valid = _candidates_by_score(best, candidate, counts, k)
    full = torch.where(candidate, best, torch.full_like(best, -1.0)).argsort(dim=1, descending=True, stable=True)[:, :k]
    assert torch.equal(valid, candidate.gather(1, full))
    assert torch.equal(order[valid], full[valid])


def _frame(faces: list[tuple[list[float], list[float]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One frame whose anchors are exactly ``faces``' boxes (zero offsets) with their class
    scores, plus a background anchor scored 0."""
    anchors = torch.tensor([box for box, _ in faces] + [[0.0, 0.0, 0.01, 0.01]])
    scores = torch.tensor([s for _, s in faces] + [[0.0, 0.0]])[None]
    return torch.zeros(1, len(anchors), 4), scores, anchors


@pytest.mark.parametrize(
    ("faces", "fragile"),
    [
        ([([0.1, 0.1, 0.3, 0.3], [0.95, 0.01])], False),  # one clear face
        ([([0.1, 0.1, 0.3, 0.3], [0.53, 0.01])], True),  # a face near the threshold
        ([([0.1, 0.1, 0.3, 0.3], [0.46, 0.01])], True),  # ... on either side
        ([([0.1, 0.1, 0.3, 0.3], [0.40, 0.01])], False),  # well below it
        ([([0.1, 0.1, 0.3, 0.3], [0.95, 0.01]), ([0.11, 0.1, 0.31, 0.3], [0.52, 0.0])], False),  # suppressed clearly
        ([([0.1, 0.1, 0.3, 0.3], [0.55, 0.01]), ([0.11, 0.1, 0.31, 0.3], [0.52, 0.0])], True),  # suppressed barely
        ([([0.1, 0.1, 0.3, 0.3], [0.60, 0.55])], True),  # Mask or NoMask: too close to call
        ([([0.1, 0.1, 0.3, 0.3], [0.90, 0.01]), ([0.15, 0.1, 0.35, 0.3], [0.88, 0.0])], True),  # NMS winner, other box
        ([([0.1, 0.1, 0.3, 0.3], [0.90, 0.01]), ([0.101, 0.1, 0.301, 0.3], [0.88, 0.0])], False),  # winner, same box
        ([([0.1, 0.1, 0.3, 0.3], [0.90, 0.01]), ([0.15, 0.1, 0.35, 0.3], [0.70, 0.0])], False),  # clear winner
    ],
)
def test_fragile_frames(faces, fragile: bool) -> None:
    from detector.postprocess import fragile_frames

    loc, scores, anchors = _frame(faces)
    assert bool(fragile_frames(loc, scores, anchors, margin=0.05)[0]) is fragile
    assert not fragile_frames(loc, scores, anchors, margin=0.0)[0] or fragile


def test_fragile_frames_batch_matches_per_frame() -> None:
    from detector.postprocess import fragile_frames

    spec = SPECS["aizoo-260"]
    anchors = generate_anchors(spec)
    g = torch.Generator().manual_seed(3)
    loc = torch.randn(6, len(anchors), 4, generator=g) * 0.5
    scores = torch.rand(6, len(anchors), 2, generator=g) ** 8  # mostly low, a few candidates
    batch = fragile_frames(loc, scores, anchors, margin=0.05)
    single = torch.cat([fragile_frames(loc[i : i + 1], scores[i : i + 1], anchors, margin=0.05) for i in range(6)])
    assert torch.equal(batch, single)
    assert not fragile_frames(loc[:0], scores[:0], anchors, margin=0.05).numel()
