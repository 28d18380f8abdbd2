"""Comparing two detectors' outputs on the same frame: equal, or the same faces.

Both take :class:`~detector.detections.Detections` with boxes in the same pixels.
``equal`` is what a float32 port must meet against the reference (ordering aside);
``same_faces`` is what a lossy variant (int8) is judged by: no face gained or lost, none
relabelled, every box where it was.
"""

from __future__ import annotations

import numpy as np

from detector.detections import Detections
from detector.boxes import box_iou


def _order(d: Detections) -> np.ndarray:
    return np.lexsort((d.boxes[:, 0], -d.scores)) if len(d) else np.zeros(0, np.int64)


def equal(ref: Detections, got: Detections, *, box_tol: float = 1.0, score_tol: float = 1e-3) -> bool:
    """Same faces in the same order of score, labels equal, boxes within ``box_tol`` pixels
    and scores within ``score_tol``."""
    if len(ref) != len(got):
        return False
    a, b = _order(ref), _order(got)
    return (
        [ref.class_names[i] for i in ref.labels[a].tolist()] == [got.class_names[i] for i in got.labels[b].tolist()]
        and np.allclose(ref.boxes[a], got.boxes[b], atol=box_tol)
        and np.allclose(ref.scores[a], got.scores[b], atol=score_tol)
    )


def same_faces(ref: Detections, got: Detections, *, min_iou: float = 0.7) -> bool:
    """As many faces, and each of ``ref``'s matched to its own face of ``got`` with the same
    label at IoU >= ``min_iou`` (greedy, in ``ref``'s order of score)."""
    if len(ref) != len(got):
        return False
    if not len(ref):
        return True
    iou = box_iou(ref.boxes, got.boxes)
    same_label = np.array([ref.class_names[i] for i in ref.labels])[:, None] == np.array(
        [got.class_names[i] for i in got.labels]
    )[None, :]
    ok = (iou >= min_iou) & same_label
    free = np.ones(len(got), bool)
    for i in _order(ref).tolist():
        hits = np.flatnonzero(ok[i] & free)
        if not len(hits):
            return False
        free[hits[np.argmax(iou[i, hits])]] = False
    return True
