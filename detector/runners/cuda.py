"""The CUDA backend: the plain module (fp32 or fp16) on batches uploaded through pinned memory."""

from __future__ import annotations

import logging

import numpy as np
import torch

from detector.preprocess import to_tensor
from detector.runners.base import RawOutputs

logger = logging.getLogger(__name__)


class CudaRunner:
    """Runs ``module`` on ``device`` (CUDA; another accelerator gets a plain ``.to(device)``
    upload), in one call per batch; ``half`` casts the inputs to fp16 (``module`` must be fp16).
    Reports backend ``"eager"``: it runs the plain module."""

    backend = "eager"

    def __init__(self, module: torch.nn.Module, *, device: torch.device, half: bool, num_threads: int | None) -> None:
        self.module = module
        self.device = device
        self.half = half
        self.num_threads = num_threads
        self._pinned: torch.Tensor | None = None  # page-locked staging for uploads

    def raw(self, frames: torch.Tensor) -> RawOutputs:
        x = to_tensor(self._upload(frames)).contiguous(memory_format=torch.channels_last)
        # cuDNN autotunes once per batch shape; fp32 stays fp32 (TF32 would round the
        # convolutions' inputs to 10-bit mantissas: ~2.5e-2 off the reference on an H200)
        with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=False):
            return self.module(x.half() if self.half else x)

    def postprocess_threads(self, batch: int) -> int | None:
        return self.num_threads

    def close(self) -> None:
        """Nothing to stop: the runner starts no threads."""

    def _upload(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames to the GPU through a reused page-locked buffer (an asynchronous DMA,
        and 4x fewer bytes than uploading floats); the cast and /255 run on the GPU."""
        if frames.device.type != "cpu" or not torch.cuda.is_available():
            return frames.to(self.device)
        n = frames.shape[0]
        if self._pinned is None or self._pinned.shape[0] < n or self._pinned.shape[1:] != frames.shape[1:]:
            self._pinned = torch.empty((max(n, 16), *frames.shape[1:]), dtype=torch.uint8).pin_memory()
        staging = self._pinned[:n]
        staging.copy_(frames)
        out = staging.to(self.device, non_blocking=True)
        # the next batch must not overwrite the buffer while this copy may still read it
        torch.cuda.current_stream(self.device).synchronize()
        return out

    def suggested_batch_size(self, input_size: int, *, most: int, memory_share: float) -> int:
        """The largest power of two (at least 16) up to ``most`` frames whose activations fit
        in ``memory_share`` of the GPU's free memory, measured with a forward pass."""
        probe = 8
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        with torch.inference_mode():
            loc, scores = self.raw(torch.from_numpy(np.zeros((probe, input_size, input_size, 3), np.uint8)))
            _ = (loc.float(), scores.float())  # measured as the detector returns them: fp16 outputs are cast
        torch.cuda.synchronize(self.device)
        per_frame = max(1, (torch.cuda.max_memory_allocated(self.device) - base) // probe)
        free, _ = torch.cuda.mem_get_info(self.device)
        fits = int(free * memory_share // per_frame)
        size = 16
        while size * 2 <= min(most, fits):
            size *= 2
        logger.info("batch size %d on %s (%.1f MB per frame, %.1f GB free)", size, self.device, per_frame / 1e6, free / 1e9)
        return size
