"""The int8 variant the benchmark measures (and why it is not the detector's default).

Eager-mode post-training static quantization (``torch.ao.quantization``, x86 engine):
per-channel symmetric int8 weights, uint8 activations calibrated by histogram observers
on frames disjoint from the ones it is checked on; the input is quantized exactly (scale
1/255: every pixel value is representable) and the heads' last convolutions stay float32,
so box offsets and logits are not rounded to 8 bits.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detector.detections import Detections
from detector.model import AizooSSD, flatten_head
from detector.predictor import FaceMaskDetector

logger = logging.getLogger(__name__)


class _Int8SSD(nn.Module):
    """A quantizable copy of :class:`AizooSSD`: conv+ReLU pairs fused, head outputs float."""

    def __init__(self, model: AizooSSD) -> None:
        super().__init__()
        self.spec = model.spec
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        self.backbone = nn.ModuleList(nn.Sequential(c, nn.ReLU()) for c in model.backbone)
        self.loc_insert = nn.ModuleList(nn.Sequential(h.insert, nn.ReLU()) for h in model.loc_heads)
        self.cls_insert = nn.ModuleList(nn.Sequential(h.insert, nn.ReLU()) for h in model.cls_heads)
        self.loc_out = nn.ModuleList(h.out for h in model.loc_heads)
        self.cls_out = nn.ModuleList(h.out for h in model.cls_heads)
        self.quantized = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, S, S) float in [0, 1] -> ``(loc (N, A, 4), scores (N, A, C))``."""
        if self.quantized:
            x = torch.quantize_per_tensor(x, 1 / 255, 0, torch.quint8)
        feats = []
        n = len(self.backbone)
        for i, block in enumerate(self.backbone):
            x = block(x)
            if i in self.spec.head_sources:
                feats.append(x)
            if i < n - 2:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)

        def head(insert: nn.Module, out: nn.Module, f: torch.Tensor, last: int) -> torch.Tensor:
            y = insert(f)
            return flatten_head(out(y.dequantize() if y.is_quantized else y), last)

        c = self.spec.num_classes
        loc = torch.cat([head(i, o, f, 4) for i, o, f in zip(self.loc_insert, self.loc_out, feats)], 1)
        cls = torch.cat([head(i, o, f, c) for i, o, f in zip(self.cls_insert, self.cls_out, feats)], 1)
        return loc, torch.sigmoid(cls)


def quantize(model: AizooSSD, calibration: np.ndarray) -> _Int8SSD:
    """An int8 copy of ``model`` calibrated on (N, S, S, 3) uint8 frames."""
    import torch.ao.quantization as tq

    qmodel = _Int8SSD(model).eval()
    for block in (*qmodel.backbone, *qmodel.loc_insert, *qmodel.cls_insert):
        tq.fuse_modules(block, [["0", "1"]], inplace=True)
    qmodel.qconfig = tq.get_default_qconfig("x86")
    for out in (*qmodel.loc_out, *qmodel.cls_out):
        out.qconfig = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # eager-mode quantization's migration notice
        tq.prepare(qmodel, inplace=True)
        with torch.inference_mode():
            for start in range(0, len(calibration), 16):
                qmodel(torch.from_numpy(calibration[start : start + 16]).permute(0, 3, 1, 2).float() / 255)
        tq.convert(qmodel, inplace=True)
    qmodel.quantized = True
    return qmodel


class Int8Detector(FaceMaskDetector):
    """:class:`FaceMaskDetector` with its model calls going to an int8 copy."""

    def __init__(self, weights: Path, threads: int, calibration: np.ndarray) -> None:
        super().__init__(weights, backend="eager", num_threads=threads)
        self.int8 = quantize(self.model, calibration)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.int8(x.contiguous())


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


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detections_match(ref: Detections, got: Detections, *, min_iou: float = 0.7) -> bool:
    """Same number of faces, each reference face found with its label at IoU >= ``min_iou``."""
    if len(ref) != len(got):
        return False
    free = list(range(len(got)))
    for box, label in zip(ref.boxes, ref.labels):
        hit = next((j for j in free if got.labels[j] == label and _iou(box, got.boxes[j]) >= min_iou), None)
        if hit is None:
            return False
        free.remove(hit)
    return True
