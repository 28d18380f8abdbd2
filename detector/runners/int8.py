"""The ``"int8"`` CPU backend: a quantized copy of the model, fragile frames run again in float32."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from detector.model import AizooSSD
from detector.postprocess import fragile_frames
from detector.runners.base import RawOutputs
from detector.runners.cpu import CpuRunner, intra_op_threads

logger = logging.getLogger(__name__)

INT8_MICRO_BATCH = 8  # int8 maps are 4x smaller: 8 frames a call ran 1.4x 1 frame a call (2 cores)
DEFAULT_INT8_MARGIN = 0.05  # int8 score errors: median ~0.02 near the threshold (benchmarks/README.md)


@dataclass(frozen=True)
class FragileCheck:
    """What :func:`~detector.postprocess.fragile_frames` needs: the detector's anchors (A, 4) and
    post-processing settings, and the score ``margin`` int8's errors must stay below (0: trust int8)."""

    anchors: torch.Tensor
    margin: float
    score_threshold: float
    iou_threshold: float
    variances: tuple[float, float, float, float]


class Int8Runner:
    """int8 outputs, with the fragile frames' replaced by ``fallback``'s float32 ones.

    Build with :meth:`calibrated`. ``int8_frames`` and ``float32_frames`` count the frames whose
    int8 outputs were kept and those run again in float32. ``micro_batch``: frames per int8 call.
    """

    backend = "int8"

    def __init__(self, model: torch.nn.Module, *, fallback: CpuRunner, check: FragileCheck) -> None:
        self.model = model
        self.fallback = fallback
        self.check = check
        self.micro_batch = INT8_MICRO_BATCH
        self.int8_frames = 0  # frames whose int8 outputs were kept
        self.float32_frames = 0  # int8 frames run again in float32 (fragile decisions)

    @classmethod
    def calibrated(
        cls, model: AizooSSD, calibration: np.ndarray, *, fallback: CpuRunner, check: FragileCheck
    ) -> Int8Runner:
        """An int8 copy of ``model`` calibrated on ``calibration`` (see :func:`detector.quantize.quantize`),
        on the fallback's thread budget. ``model``: the full widths, not a pruned copy: the int8
        kernels ran 0.73x on the pruned ones."""
        from detector.quantize import quantize

        with intra_op_threads(fallback.batcher.num_threads):
            int8 = quantize(model, calibration)
        return cls(int8, fallback=fallback, check=check)

    def raw(self, frames: torch.Tensor) -> RawOutputs:
        batcher = self.fallback.batcher
        loc, scores = batcher.run(frames, self.model, self.micro_batch)
        again = torch.zeros(0, dtype=torch.long)
        c = self.check
        if c.margin > 0:
            with intra_op_threads(1 if batcher.num_threads else None):  # ~0.1 ms a frame
                fragile = fragile_frames(
                    loc, scores, c.anchors, margin=c.margin, score_threshold=c.score_threshold,
                    iou_threshold=c.iou_threshold, variances=c.variances,
                )
            again = fragile.nonzero().flatten()
            if len(again):
                loc[again], scores[again] = self.fallback.raw(frames[again])
        self.float32_frames += len(again)
        self.int8_frames += len(frames) - len(again)
        return loc, scores

    def postprocess_threads(self, batch: int) -> int | None:
        return self.fallback.postprocess_threads(batch)

    def close(self) -> None:
        self.fallback.close()
