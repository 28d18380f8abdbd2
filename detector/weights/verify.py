"""Parity checks for a loaded model: against OpenCV DNN on the Caffe model, or against itself.

* :func:`opencv_parity`: the reference runtime (OpenCV 4.x ``dnn.readNetFromCaffe`` on the
  published ``.prototxt`` + ``.caffemodel``) and the port on the same built-in inputs.
* :func:`self_consistency`: the port (float32, BatchNorm folded, kernels converted to OIHW)
  against a float64 functional forward over the file's raw tensors with BatchNorm applied
  as its own step: it checks the conversion when no reference runtime is at hand.

Both report the largest absolute difference of the box offsets and of the scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from detector.errors import WeightsError, one_line
from detector.model import AizooSSD, flatten_head
from detector.preprocess import to_tensor
from detector.weights.convert import RawWeights, aizoo_layer_names, convert_layout

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4


@dataclass(frozen=True)
class ParityReport:
    """Largest absolute differences between the port and a reference over ``inputs`` pictures."""

    reference: str
    inputs: int
    loc_max_abs_diff: float
    scores_max_abs_diff: float

    @property
    def max_abs_diff(self) -> float:
        return max(self.loc_max_abs_diff, self.scores_max_abs_diff)

    def passed(self, tolerance: float = TOLERANCE) -> bool:
        return self.max_abs_diff <= tolerance


def builtin_inputs(size: int, count: int = 8) -> np.ndarray:
    """``(count, size, size, 3)`` uint8 RGB test pictures, the same on every run.

    In turn: uniform noise, coarse random blocks, a smooth gradient, black, white (the
    most telling first, for small counts); at the model's own resolution, so no resizing
    is involved.
    """
    rng = np.random.default_rng(20200201)
    ramp = np.linspace(0, 255, size)
    cell = -(-size // 10)
    makers = (
        lambda: rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        lambda: np.kron(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8), np.ones((cell, cell, 1), np.uint8))[
            :size, :size
        ],
        lambda: np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], ramp[::-1, None]), -1).astype(np.uint8),
        lambda: np.zeros((size, size, 3), np.uint8),
        lambda: np.full((size, size, 3), 255, np.uint8),
    )
    return np.stack([makers[i % len(makers)]() for i in range(count)])


def _run_port(model: AizooSSD, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        loc, scores = model.eval()(to_tensor(batch))
    return loc.numpy(), scores.numpy()


def _report(reference: str, port: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray]) -> ParityReport:
    if port[0].shape != ref[0].shape or port[1].shape != ref[1].shape:
        raise WeightsError(
            reference,
            f"outputs of shapes {ref[0].shape}/{ref[1].shape}, the port gives {port[0].shape}/{port[1].shape}",
        )
    return ParityReport(
        reference=reference,
        inputs=len(port[0]),
        loc_max_abs_diff=float(np.abs(port[0] - ref[0]).max()),
        scores_max_abs_diff=float(np.abs(port[1] - ref[1]).max()),
    )


def opencv_available() -> bool:
    """Whether this OpenCV still has the Caffe importer (OpenCV 5 removed it)."""
    return hasattr(cv2, "dnn") and hasattr(cv2.dnn, "readNetFromCaffe")


def opencv_parity(model: AizooSSD, prototxt: Path, caffemodel: Path, batch: np.ndarray | None = None) -> ParityReport:
    """The port against OpenCV DNN running the Caffe pair, on ``batch`` (default: :func:`builtin_inputs`)."""
    if not opencv_available():
        raise WeightsError(caffemodel, f"OpenCV {cv2.__version__} has no Caffe importer (it needs OpenCV 4.x)")
    size = model.spec.input_size
    batch = builtin_inputs(size) if batch is None else batch
    try:
        net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    except cv2.error as exc:
        raise WeightsError(
            caffemodel, f"OpenCV cannot read the Caffe pair ({one_line(exc, limit=160)})"
        ) from None
    locs, scores = [], []
    for picture in batch:
        net.setInput(cv2.dnn.blobFromImage(picture, scalefactor=1 / 255.0, size=(size, size)))
        loc, cls = net.forward(["loc_branch_concat", "cls_branch_concat"])
        locs.append(loc)
        scores.append(cls)
    ref = (np.concatenate(locs), np.concatenate(scores))
    return _report(f"OpenCV {cv2.__version__} DNN on {caffemodel.name}", _run_port(model, batch), ref)


def _reference_forward(raw: RawWeights, model: AizooSSD, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """float64 forward over ``raw``'s own tensors, BatchNorm unfolded; mirrors the model graph."""
    spec = model.spec

    def conv(name: str, h: torch.Tensor, padding: int) -> torch.Tensor:
        w = torch.from_numpy(convert_layout(np.asarray(raw.tensors[f"{name}.weight"], np.float64), raw.layout))
        b = raw.tensors.get(f"{name}.bias")
        h = F.conv2d(
            h, w, None if b is None else torch.from_numpy(np.asarray(b, np.float64).reshape(-1)), padding=padding
        )
        bn = {
            k.split(".", 1)[1]: torch.from_numpy(np.asarray(v, np.float64))
            for k, v in raw.tensors.items()
            if k.startswith(f"{name}_bn.")
        }
        if bn:
            h = F.batch_norm(h, bn["running_mean"], bn["running_var"], bn.get("weight"), bn.get("bias"), eps=raw.bn_eps)
        return h

    names = {dst: src for src, dst in aizoo_layer_names(spec).items()}
    n = len(spec.backbone_channels)
    feats = []
    h = x.double()
    for i in range(n):
        h = F.relu(conv(names[f"backbone.{i}"], h, 0 if i == n - 1 else 1))
        if i in spec.head_sources:
            feats.append(h)
        if i < n - 2:
            h = F.max_pool2d(h, 2, 2, ceil_mode=True)
    outputs = []
    for kind, last in (("loc", 4), ("cls", spec.num_classes)):
        maps = [
            conv(names[f"{kind}_heads.{j}.out"], F.relu(conv(names[f"{kind}_heads.{j}.insert"], f, 1)), 1)
            for j, f in enumerate(feats)
        ]
        outputs.append(torch.cat([flatten_head(m, last) for m in maps], 1))
    return outputs[0].numpy(), torch.sigmoid(outputs[1]).numpy()


def self_consistency(model: AizooSSD, raw: RawWeights, batch: np.ndarray | None = None) -> ParityReport:
    """The port against a float64 forward over the file's unconverted tensors."""
    batch = builtin_inputs(model.spec.input_size) if batch is None else batch
    with torch.inference_mode():
        ref = _reference_forward(raw, model, to_tensor(batch))
    return _report(f"self-consistency: float64 forward over the {raw.format} tensors", _run_port(model, batch), ref)
