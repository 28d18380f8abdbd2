"""How the model runs: one :class:`Runner` per backend, chosen once by :func:`build_runner`.

- ``"eager"`` (:mod:`.eager`): the plain module on CPU, channels-last;
- ``"fused"`` (:mod:`.fused`): :class:`~detector.fused.FusedAizooSSD` on CPU;
- ``"int8"`` (:mod:`.int8`): a quantized copy on CPU, set by :meth:`FaceMaskDetector.quantize`;
- CUDA (:mod:`.cuda`): the plain module, fp32 or fp16, whatever backend was asked for.

The CPU runners share a :class:`~detector.runners.cpu.MicroBatcher` (micro-batches, threads).
"""

from __future__ import annotations

import torch

from detector.fused import fused_cpu_available
from detector.model import AizooSSD
from detector.runners.base import RawOutputs, Runner
from detector.runners.cpu import CpuRunner, MicroBatcher, intra_op_threads
from detector.runners.cuda import CudaRunner
from detector.runners.eager import EagerRunner
from detector.runners.fused import FusedRunner
from detector.runners.int8 import DEFAULT_INT8_MARGIN, INT8_MICRO_BATCH, FragileCheck, Int8Runner

__all__ = [
    "BACKENDS", "DEFAULT_INT8_MARGIN", "INT8_MICRO_BATCH", "CpuRunner", "MicroBatcher", "CudaRunner",
    "EagerRunner", "FragileCheck", "FusedRunner", "Int8Runner", "RawOutputs", "Runner", "build_runner",
    "intra_op_threads", "resolve_backend",
]

BACKENDS = ("auto", "fused", "eager")  # and "int8", set by FaceMaskDetector.quantize


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that runs for ``backend`` (one of :data:`BACKENDS`) on ``device``: off the
    CPU always ``"eager"``; ``"auto"``: ``"fused"`` where this torch build has it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device.type != "cpu":
        return "eager"
    if backend == "auto":
        return "fused" if fused_cpu_available() else "eager"
    if backend == "fused" and not fused_cpu_available():
        raise RuntimeError("backend='fused' needs a torch build with oneDNN (mkldnn)")
    return backend


def build_runner(
    backend: str, module: AizooSSD, *, device: torch.device, half: bool, num_threads: int | None, micro_batch: int
) -> Runner:
    """The runner of a resolved float backend (``"eager"`` or ``"fused"``, see :func:`resolve_backend`)
    for ``module`` on ``device``; the CPU settings as :class:`~detector.predictor.FaceMaskDetector` takes them."""
    if device.type != "cpu":
        return CudaRunner(module, device=device, half=half, num_threads=num_threads)
    batcher = MicroBatcher(num_threads=num_threads, micro_batch=micro_batch)
    if backend == "fused":
        return FusedRunner(module, batcher)
    if backend == "eager":
        return EagerRunner(module, batcher)
    raise ValueError(f"no float CPU runner for backend {backend!r}")
