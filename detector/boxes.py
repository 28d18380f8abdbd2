"""Box geometry in numpy: boxes are ``(N, 4)`` arrays of ``(x1, y1, x2, y2)`` corners.

Used by the tracker (:mod:`jobs.results.bytetrack`) and by detection comparisons
(:mod:`detector.compare`); NMS runs in torch in :mod:`detector.postprocess`.
"""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray, *, buffer: float = 0.0) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4): an (N, M) float array.

    ``buffer`` enlarges each box by that fraction of its width and height on every side first.
    """
    a = enlarge_boxes(np.asarray(a, np.float64).reshape(-1, 4), buffer)
    b = enlarge_boxes(np.asarray(b, np.float64).reshape(-1, 4), buffer)
    # explicit products, not np.prod: the tracker calls this on a few boxes per frame
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def enlarge_boxes(boxes: np.ndarray, buffer: float) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 ``boxes`` enlarged by ``buffer`` times their width and height on
    every side (``buffer`` 0: ``boxes`` themselves)."""
    if buffer == 0:
        return boxes
    pad = (boxes[:, 2:] - boxes[:, :2]) * buffer
    return np.concatenate([boxes[:, :2] - pad, boxes[:, 2:] + pad], axis=1)
