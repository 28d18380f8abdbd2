"""The face-mask detector: a loaded model, its anchors and post-processing, in batches."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from detector.anchors import generate_anchors
from detector.detections import Detections
from detector.postprocess import postprocess
from detector.preprocess import resize_rgb, to_tensor
from detector.weights import LoadedWeights, load_weights

logger = logging.getLogger(__name__)


class FaceMaskDetector:
    """Runs the AIZOO SSD on RGB pictures of any size.

    Args:
        weights: a :class:`LoadedWeights` or a path to any supported weight file.
        device: ``"cpu"`` or ``"cuda"``; ``half`` uses fp16 on CUDA.
        score_threshold, iou_threshold: post-processing defaults of the reference.
    """

    def __init__(
        self,
        weights: LoadedWeights | Path | str,
        *,
        device: str = "cpu",
        half: bool = False,
        score_threshold: float = 0.5,
        iou_threshold: float = 0.4,
    ) -> None:
        loaded = weights if isinstance(weights, LoadedWeights) else load_weights(weights)
        self.weights = loaded
        self.spec = loaded.spec
        self.device = torch.device(device)
        self.half = bool(half and self.device.type == "cuda")
        model = loaded.model.to(self.device).eval()
        model = model.to(memory_format=torch.channels_last)
        if self.half:
            model = model.half()
        self.model = model
        self.anchors = generate_anchors(self.spec).to(self.device)
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB pictures -> (B, S, S, 3) uint8 model inputs."""
        return np.stack([resize_rgb(im, self.input_size) for im in images])

    @torch.inference_mode()
    def raw(self, batch: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, S, 3) uint8 inputs -> raw ``(loc (B, A, 4), scores (B, A, C))`` in float32."""
        x = to_tensor(batch).to(self.device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        if self.half:
            x = x.half()
        loc, scores = self.model(x)
        return loc.float(), scores.float()

    @torch.inference_mode()
    def detect_prepared(self, batch: np.ndarray | torch.Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        """Detections for prepared inputs; ``image_sizes`` are the sources' ``(width, height)``."""
        loc, scores = self.raw(batch)
        return postprocess(
            loc,
            scores,
            self.anchors,
            image_sizes,
            score_threshold=self.score_threshold,
            iou_threshold=self.iou_threshold,
            variances=self.spec.variances,
            class_names=self.spec.class_names,
        )

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections for RGB ``(H, W, 3)`` uint8 pictures, boxes in their pixels."""
        if not images:
            return []
        sizes = [(im.shape[1], im.shape[0]) for im in images]
        return self.detect_prepared(self.prepare(images), sizes)
