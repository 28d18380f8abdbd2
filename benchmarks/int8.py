"""Frames the int8 detector's agreement is measured on (``detector.quantize`` is the model).

Photos are cropped, flipped, dimmed and shrunk onto dark canvases: harder and more varied
than a video's consecutive frames, so agreement here is a lower bound for real footage.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def varied_frames(photos: Sequence[np.ndarray], n: int, size: int, *, seed: int) -> np.ndarray:
    """(n, size, size, 3) uint8: crops at 30-100 % zoom, flips, 0.4-1.3x brightness, and
    every fourth frame the crop shrunk onto a dark canvas (small faces)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        scale = rng.uniform(0.3, 1.0)
        ch, cw = max(int(h * scale), 40), max(int(w * scale), 40)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = img[y : y + ch, x : x + cw].astype(np.float32)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = np.clip(crop * rng.uniform(0.4, 1.3), 0, 255).astype(np.uint8)
        if i % 4 == 3:
            canvas = rng.integers(0, 60, size=(int(ch * rng.uniform(1.2, 2.5)), int(cw * rng.uniform(1.2, 2.5)), 3))
            canvas = canvas.astype(np.uint8)
            cy, cx = rng.integers(0, canvas.shape[0] - ch + 1), rng.integers(0, canvas.shape[1] - cw + 1)
            canvas[cy : cy + ch, cx : cx + cw] = crop
            crop = canvas
        out.append(cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_LINEAR))
    return np.stack(out)
