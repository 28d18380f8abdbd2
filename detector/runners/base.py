"""What every backend's runner offers the facade (:class:`~detector.predictor.FaceMaskDetector`)."""

from __future__ import annotations

from typing import Protocol

import torch

RawOutputs = tuple[torch.Tensor, torch.Tensor]  # loc (B, A, 4), scores (B, A, C)


class Runner(Protocol):
    """Runs the model on prepared frames, for one backend.

    ``backend`` is the name :attr:`FaceMaskDetector.backend` reports (``"eager"``, ``"fused"``,
    ``"int8"``; CUDA reports ``"eager"``, the plain module).
    """

    backend: str

    def raw(self, frames: torch.Tensor) -> RawOutputs:
        """(B, S, S, 3) uint8 frames, B > 0, on the CPU -> ``(loc (B, A, 4), scores (B, A, C))``
        on the runner's device, float32 (float16 for CUDA ``half``)."""
        ...

    def postprocess_threads(self, batch: int) -> int | None:
        """The intra-op threads post-processing a batch of ``batch`` frames should use after
        this runner ran it (``None``: torch's setting as is)."""
        ...

    def close(self) -> None:
        """Stops the runner's worker threads, if it started any."""
        ...
