"""A typed detections result with validated shapes (supervision style)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector.spec import CLASS_NAMES


@dataclass(frozen=True)
class Detections:
    """Faces found in one picture.

    Attributes:
        boxes: (K, 4) float32 ``(x1, y1, x2, y2)`` in the source picture's pixels, clipped.
        scores: (K,) float32 class scores in [0, 1].
        labels: (K,) int64 class indices into ``class_names``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...] = field(default=CLASS_NAMES)

    def __post_init__(self) -> None:
        k = len(self.scores)
        if self.boxes.shape != (k, 4):
            raise ValueError(f"boxes must be ({k}, 4), got {self.boxes.shape}")
        if self.scores.shape != (k,) or self.labels.shape != (k,):
            raise ValueError("scores and labels must be 1-D of the same length")
        if k and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError("a label is out of range of class_names")

    @classmethod
    def empty(cls, class_names: tuple[str, ...] = CLASS_NAMES) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), class_names)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def label_names(self) -> list[str]:
        return [self.class_names[i] for i in self.labels]

    def count(self, name: str) -> int:
        return int(np.count_nonzero(self.labels == self.class_names.index(name)))

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per face: ``label, score, x1, y1, x2, y2`` as Python scalars."""
        return [
            {
                "label": self.class_names[int(lab)],
                "score": float(s),
                "x1": float(b[0]),
                "y1": float(b[1]),
                "x2": float(b[2]),
                "y2": float(b[3]),
            }
            for b, s, lab in zip(self.boxes, self.scores, self.labels)
        ]
