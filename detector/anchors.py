"""SSD anchors of the AIZOO model, in the order the heads emit them."""

from __future__ import annotations

import numpy as np
import torch

from detector.spec import ModelSpec


def generate_anchors(spec: ModelSpec) -> torch.Tensor:
    """Anchors as (A, 4) float32 ``(x1, y1, x2, y2)`` normalised to [0, 1] of the input.

    Per feature map of side ``s``: centres at ``(j + 0.5) / s``, ordered row, column,
    anchor. Per cell: every size at the first ratio, then the first size at the other
    ratios; ``w = size * sqrt(ratio)``, ``h = size / sqrt(ratio)``.
    """
    out = []
    for side, sizes in zip(spec.feature_map_sizes, spec.anchor_sizes):
        centres = (np.arange(side, dtype=np.float64) + 0.5) / side
        cx, cy = np.meshgrid(centres, centres)  # cx varies along columns
        wh = [(s * np.sqrt(spec.anchor_ratios[0]), s / np.sqrt(spec.anchor_ratios[0])) for s in sizes]
        wh += [(sizes[0] * np.sqrt(r), sizes[0] / np.sqrt(r)) for r in spec.anchor_ratios[1:]]
        half = np.array([(-w / 2, -h / 2, w / 2, h / 2) for w, h in wh])  # (a, 4)
        ctr = np.stack([cx, cy, cx, cy], axis=-1)[:, :, None, :]  # (s, s, 1, 4)
        out.append((ctr + half).reshape(-1, 4))
    return torch.from_numpy(np.concatenate(out).astype(np.float32))
