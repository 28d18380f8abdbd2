"""The ``"eager"`` CPU backend: the plain module, channels-last, one call per micro-batch."""

from __future__ import annotations

import torch

from detector.runners.base import RawOutputs
from detector.runners.cpu import CpuRunner, MicroBatcher, Forward


class EagerRunner(CpuRunner):
    """Runs ``module`` (the :class:`~detector.model.AizooSSD` that runs, or any callable of the
    same shapes) as is on each micro-batch."""

    backend = "eager"

    def __init__(self, module: Forward, batcher: MicroBatcher) -> None:
        super().__init__(batcher)
        self.module = module

    def forward(self, x: torch.Tensor) -> RawOutputs:
        return self.module(x)
