"""Centre/size box coding with variances (SSD)."""

from __future__ import annotations

import torch


def decode_boxes(
    loc: torch.Tensor,
    anchors: torch.Tensor,
    variances: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2),
) -> torch.Tensor:
    """Decodes offsets into boxes.

    Args:
        loc: (..., A, 4) offsets ``(dx, dy, dw, dh)``.
        anchors: (A, 4) or broadcastable to ``loc``: ``(x1, y1, x2, y2)``, normalised.
    Returns:
        (..., A, 4) boxes ``(x1, y1, x2, y2)``, normalised (not clipped).
    """
    var = loc.new_tensor(variances)
    loc = loc * var
    a_wh = anchors[..., 2:] - anchors[..., :2]
    a_ctr = (anchors[..., :2] + anchors[..., 2:]) / 2
    ctr = loc[..., :2] * a_wh + a_ctr
    wh = torch.exp(loc[..., 2:]) * a_wh
    return torch.cat([ctr - wh / 2, ctr + wh / 2], dim=-1)
