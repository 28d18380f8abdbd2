"""Input preparation exactly as the reference does it: whole frame, bilinear, RGB, /255."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # decode workers resize frames without paying for importing torch
    import torch


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (size, size, 3) uint8, aspect not kept, ``cv2.INTER_LINEAR``."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) picture, got shape {image.shape}")
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def to_tensor(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 RGB -> (B, 3, S, S) float32 in [0, 1], channels-last in memory."""
    import torch

    t = torch.as_tensor(batch)
    return t.permute(0, 3, 1, 2).float().div_(255.0)
