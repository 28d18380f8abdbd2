"""The ``"fused"`` CPU backend: :class:`~detector.fused.FusedAizooSSD`, built on first use."""

from __future__ import annotations

import threading

import torch

from detector.fused import FusedAizooSSD
from detector.model import AizooSSD
from detector.runners.base import RawOutputs
from detector.runners.cpu import CpuRunner, MicroBatcher


class FusedRunner(CpuRunner):
    """Runs the fused graph of ``module``; the graph is built once, on the first call (its
    kernels are packed per input shape, so nothing is spent before the shapes are known)."""

    backend = "fused"

    def __init__(self, module: AizooSSD, batcher: MicroBatcher) -> None:
        super().__init__(batcher)
        self.module = module
        self._graph: FusedAizooSSD | None = None
        self._lock = threading.Lock()

    @property
    def graph(self) -> FusedAizooSSD:
        if self._graph is None:
            with self._lock:
                if self._graph is None:
                    self._graph = FusedAizooSSD(self.module)
        return self._graph

    def forward(self, x: torch.Tensor) -> RawOutputs:
        return self.graph(x)
