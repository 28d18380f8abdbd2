"""Batched, vectorised post-processing: best class per anchor, threshold, NMS, pixels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from detector.box_coder import decode_boxes
from detector.detections import Detections
from detector.spec import CLASS_NAMES

_AREA_EPS = 1e-3  # AIZOO's single_class_non_max_suppression adds this to widths and heights


def pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """IoU of every pair, as AIZOO's NMS computes it.

    Args:
        boxes: (B, K, 4) ``(x1, y1, x2, y2)``.
    Returns:
        (B, K, K) IoU; areas carry AIZOO's +1e-3 on each side.
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = (x2 - x1 + _AREA_EPS) * (y2 - y1 + _AREA_EPS)
    iw = (torch.minimum(x2[:, :, None], x2[:, None, :]) - torch.maximum(x1[:, :, None], x1[:, None, :])).clamp(min=0)
    ih = (torch.minimum(y2[:, :, None], y2[:, None, :]) - torch.maximum(y1[:, :, None], y1[:, None, :])).clamp(min=0)
    inter = iw * ih
    return inter / (area[:, :, None] + area[:, None, :] - inter)


def batched_nms(boxes: torch.Tensor, valid: torch.Tensor, *, iou_threshold: float) -> torch.Tensor:
    """Greedy single-class NMS for a batch, without a Python loop over boxes.

    Args:
        boxes: (B, K, 4), each row sorted by descending score.
        valid: (B, K) bool, which rows are real candidates.
    Returns:
        (B, K) bool keep mask, equal to greedy NMS in score order.

    Greedy NMS is the unique fixed point of ``keep[i] = valid[i] and no kept j < i
    overlaps i``; iterating that map from "keep all" fixes one more position per
    step, so it converges in at most K (in practice two or three) tensor steps.
    """
    k = boxes.shape[1]
    if k == 0:
        return valid
    earlier = torch.ones(k, k, dtype=torch.bool, device=boxes.device).triu(diagonal=1)  # [j, i]: j < i
    suppresses = (pairwise_iou(boxes) > iou_threshold) & earlier & valid[:, :, None]
    keep = valid
    for _ in range(k):
        new_keep = valid & ~(suppresses & keep[:, :, None]).any(dim=1)
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def best_class(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores.max(dim=-1)``: (..., C) -> best score (...), its class (...) int64.

    Ties go to the lower class, as ``max`` does. Two classes (the AIZOO model) take an
    elementwise maximum: ``max`` over a last dimension of 2 is a slow reduction.
    """
    if scores.shape[-1] != 2:
        values, indices = scores.max(dim=-1)
        return values, indices
    first, second = scores.unbind(-1)
    return torch.maximum(first, second), (second > first).long()


def _candidates_by_score(
    best: torch.Tensor, candidate: torch.Tensor, counts: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's candidates by descending score (ties: lower anchor first), padded to ``k``.

    Args:
        best: (B, A) scores; candidate: (B, A) bool; counts: (B,) candidates per row.
    Returns:
        ``order`` (B, k) anchor indices (padding: anchor 0) and ``valid`` (B, k) bool.

    Sorts only the candidates, not all A anchors of every row.
    """
    rows, cols = candidate.nonzero(as_tuple=True)  # row-major: by row, then anchor
    by_score = torch.argsort(best[rows, cols], descending=True, stable=True)
    by_row = by_score[torch.argsort(rows[by_score], stable=True)]
    rows, cols = rows[by_row], cols[by_row]
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(rows), device=best.device) - starts[rows]
    order = torch.zeros(best.shape[0], k, dtype=torch.long, device=best.device)
    order[rows, slot] = cols
    valid = torch.zeros(best.shape[0], k, dtype=torch.bool, device=best.device)
    valid[rows, slot] = True
    return order, valid


def postprocess(
    loc: torch.Tensor,
    scores: torch.Tensor,
    anchors: torch.Tensor,
    image_sizes: Sequence[tuple[int, int]],
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.4,
    variances: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2),
    class_names: tuple[str, ...] = CLASS_NAMES,
) -> list[Detections]:
    """Turns raw model outputs into per-picture detections.

    Args:
        loc: (B, A, 4) box offsets. scores: (B, A, C) sigmoid scores.
        anchors: (A, 4) normalised ``(x1, y1, x2, y2)``.
        image_sizes: B pairs ``(width, height)`` of the source pictures.
    Returns:
        B :class:`Detections`, boxes in source pixels, sorted by descending score.
    """
    batch = loc.shape[0]
    if len(image_sizes) != batch:
        raise ValueError(f"{len(image_sizes)} image sizes for a batch of {batch}")
    loc = loc.float()
    best, labels = best_class(scores.float())  # (B, A)
    candidate = best > score_threshold
    counts = candidate.sum(dim=1)
    k = int(counts.max()) if batch else 0
    if k == 0:
        return [Detections.empty(class_names) for _ in range(batch)]
    order, valid = _candidates_by_score(best, candidate, counts, k)  # (B, k)
    cand_loc = loc.gather(1, order[:, :, None].expand(-1, -1, 4))
    boxes = decode_boxes(cand_loc, anchors.to(loc.device)[order], variances)  # (B, k, 4)
    keep = batched_nms(boxes, valid, iou_threshold=iou_threshold)

    sizes = torch.tensor(image_sizes, dtype=torch.float32, device=loc.device)  # (B, 2) w, h
    scale = sizes.repeat(1, 2)[:, None, :]  # (B, 1, 4)
    pixel = torch.minimum(torch.clamp(boxes * scale, min=0), scale)
    keep_np = keep.cpu().numpy()
    pixel_np = pixel.cpu().numpy()
    score_np = best.gather(1, order).cpu().numpy()
    label_np = labels.gather(1, order).cpu().numpy()
    return [
        Detections(
            pixel_np[i][keep_np[i]].astype(np.float32),
            score_np[i][keep_np[i]].astype(np.float32),
            label_np[i][keep_np[i]].astype(np.int64),
            class_names,
        )
        for i in range(batch)
    ]


def fragile_frames(
    loc: torch.Tensor,
    scores: torch.Tensor,
    anchors: torch.Tensor,
    *,
    margin: float,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.4,
    same_iou: float = 0.7,
    variances: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2),
) -> torch.Tensor:
    """Which frames' detections could change if any anchor's scores moved by up to ``margin``.

    Args:
        loc: (B, A, 4) box offsets. scores: (B, A, C) sigmoid scores.
        anchors: (A, 4) normalised ``(x1, y1, x2, y2)``.
    Returns:
        (B,) bool. A frame is fragile when one of its decisions is closer than the margin:
        a face scored within ``margin`` of the threshold that no clearly stronger overlapping
        face suppresses; a kept face whose two best classes are within ``2 * margin``; or two
        overlapping candidates, one of them kept, within ``2 * margin`` of each other whose
        boxes differ (IoU < ``same_iou``), so that NMS could keep the other box.

    An approximate model (int8) is trusted on the other frames: there its errors, if below
    the margin, change scores and boxes a little but no face, label or NMS winner.
    """
    batch = loc.shape[0]
    best, _ = best_class(scores.float())
    if scores.shape[-1] > 1:
        top2 = scores.float().topk(2, dim=-1).values
        gap = top2[..., 0] - top2[..., 1]
    else:
        gap = torch.full_like(best, float("inf"))
    candidate = best > score_threshold - margin
    counts = candidate.sum(dim=1)
    k = int(counts.max()) if batch else 0
    if k == 0:
        return torch.zeros(batch, dtype=torch.bool, device=loc.device)
    order, valid = _candidates_by_score(best, candidate, counts, k)
    boxes = decode_boxes(loc.float().gather(1, order[:, :, None].expand(-1, -1, 4)), anchors.to(loc.device)[order], variances)
    s = best.gather(1, order).masked_fill(~valid, -1.0)  # (B, k), descending
    keep = batched_nms(boxes, valid & (s > score_threshold), iou_threshold=iou_threshold)
    iou = pairwise_iou(boxes)
    overlap = (iou > iou_threshold) & valid[:, :, None] & valid[:, None, :]
    overlap &= ~torch.eye(k, dtype=torch.bool, device=loc.device)
    # a candidate near the threshold, not clearly suppressed by a kept stronger face
    near = valid & ((s - score_threshold).abs() <= margin)
    clearly_suppressed = (overlap & keep[:, :, None] & (s[:, :, None] - s[:, None, :] > 2 * margin)).any(dim=1)
    threshold = (near & ~clearly_suppressed).any(dim=1)
    # a kept face whose label could flip
    label = (keep & (gap.gather(1, order) < 2 * margin)).any(dim=1)
    # an NMS winner that could change to a visibly different box
    close = (s[:, :, None] - s[:, None, :]).abs() <= 2 * margin
    either_kept = keep[:, :, None] | keep[:, None, :]
    winner = (overlap & close & either_kept & (iou < same_iou)).flatten(1).any(dim=1)
    return threshold | label | winner
