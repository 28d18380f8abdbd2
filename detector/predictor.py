"""The face-mask detector: a loaded model, its anchors and post-processing, in batches."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.anchors import generate_anchors
from detector.detections import Detections
from detector.model import FusedAizooSSD, flush_denormals_, fused_cpu_available
from detector.postprocess import fragile_frames, postprocess
from detector.prune import PruneReport, prune_dead_channels
from detector.preprocess import resize_rgb, to_tensor
from detector.weights import LoadedWeights, load_weights

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "fused", "eager")  # and "int8", set by :meth:`FaceMaskDetector.quantize`
DEFAULT_MICRO_BATCH = 1
INT8_MICRO_BATCH = 8  # int8 maps are 4x smaller: 8 frames a call ran 1.4x 1 frame a call (2 cores)
DEFAULT_INT8_MARGIN = 0.05  # int8 score errors: median ~0.02 near the threshold (benchmarks/README.md)


class FaceMaskDetector:
    """Runs the AIZOO SSD on RGB pictures of any size.

    Args:
        weights: a :class:`LoadedWeights` or a path to any supported weight file.
        device: ``"cpu"`` or ``"cuda"``; ``half`` uses fp16 on CUDA.
        score_threshold, iou_threshold: post-processing defaults of the reference.
        backend: how the model runs on CPU. ``"fused"``: :class:`~detector.model.FusedAizooSSD`,
            oneDNN convolutions with ReLU fused and kernels packed once per input shape;
            ``"eager"``: the plain module, channels-last; ``"auto"`` (default): fused where
            this torch build has it. CUDA always runs the plain module.
        num_threads: CPU threads the detector uses in all. ``None`` (default) leaves torch's
            setting alone and runs on the calling thread. ``n``: each call runs with ``n``
            intra-op threads, restored afterwards; a batch of several micro-batches instead
            runs them on ``n`` worker threads of one intra-op thread each (whole frames in
            parallel, no synchronisation inside a layer). Never more than ``n`` busy threads.
        micro_batch: frames per model call on CPU (default 1). The maps of one 260x260
            frame are ~17 MB; batch 16 in one call spills them out of cache and runs at
            ~2/3 the speed, 4 at a time already loses ~1/3 on a 2-core Xeon. (int8 runs
            ``INT8_MICRO_BATCH`` = 8 frames a call: its maps are 4x smaller.)
        prune: run a copy of the model without its provably dead filters
            (:func:`~detector.prune.prune_dead_channels`; default): the same outputs to
            float rounding (~1e-6), ~15-20 % less time in float32 on CPU and CUDA with the
            published weights. Not with ``half``: on tensor cores the pruned layers' odd
            channel counts ran 0.82x the full model (H200, ``benchmarks/README.md``).

    ``model`` is the plain :class:`~detector.model.AizooSSD` as loaded (channels-last on
    CPU) whatever the backend; ``runner`` is the module that runs: ``model``, or its pruned
    copy (``pruned`` says what was removed). The fused graph is built from ``runner`` once,
    on first use. :meth:`quantize` switches a CPU detector to an int8 copy of ``model`` (the
    full widths: the int8 kernels ran 0.73x on the pruned ones; frames run again in float32
    use ``runner``) (backend ``"int8"``).
    """

    def __init__(
        self,
        weights: LoadedWeights | Path | str,
        *,
        device: str = "cpu",
        half: bool = False,
        score_threshold: float = 0.5,
        iou_threshold: float = 0.4,
        backend: str = "auto",
        num_threads: int | None = None,
        micro_batch: int = DEFAULT_MICRO_BATCH,
        prune: bool = True,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be None or at least 1, got {num_threads}")
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be at least 1, got {micro_batch}")
        loaded = weights if isinstance(weights, LoadedWeights) else load_weights(weights)
        self.weights = loaded
        self.spec = loaded.spec
        self.device = torch.device(device)
        self.half = bool(half and self.device.type == "cuda")
        model = loaded.model.to(self.device).eval()
        model = model.to(memory_format=torch.channels_last)
        flushed = flush_denormals_(model)
        if flushed:
            logger.debug("zeroed %d subnormal weights of %s", flushed, loaded.path)
        if self.half:
            model = model.half()
        self.model = model
        self.runner = model
        self.pruned: PruneReport | None = None
        if prune and not self.half:  # fp16 on tensor cores ran 0.82x pruned (H200): odd channel counts
            runner, self.pruned = prune_dead_channels(model)
            self.runner = runner.to(memory_format=torch.channels_last)
        self.anchors = generate_anchors(self.spec).to(self.device)
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.num_threads = num_threads
        self.micro_batch = micro_batch
        self.backend = self._resolve_backend(backend)
        self._init_runtime()

    def _resolve_backend(self, backend: str) -> str:
        if self.device.type != "cpu":
            return "eager"
        if backend == "auto":
            return "fused" if fused_cpu_available() else "eager"
        if backend == "fused" and not fused_cpu_available():
            raise RuntimeError("backend='fused' needs a torch build with oneDNN (mkldnn)")
        return backend

    def _init_runtime(self) -> None:
        """State that is rebuilt rather than copied: the fused graph and the worker threads."""
        self._fused: FusedAizooSSD | None = None
        self._int8: torch.nn.Module | None = None
        self.int8_frames = 0  # frames whose int8 outputs were kept
        self.float32_frames = 0  # int8 frames run again in float32 (fragile decisions)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pinned: torch.Tensor | None = None  # CUDA: page-locked staging for uploads

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self.backend == "int8":
            raise TypeError("an int8 FaceMaskDetector cannot be copied; quantize the copy instead")
        for key in ("_fused", "_int8", "_pool", "_lock", "_pinned"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def close(self) -> None:
        """Stops the worker threads, if any were started (they also stop at exit)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def quantize(self, calibration: np.ndarray, *, margin: float = DEFAULT_INT8_MARGIN) -> None:
        """Runs the model in int8 from now on (CPU only), calibrated on ``calibration``:
        (N, S, S, 3) uint8 RGB frames already resized to the input (see :mod:`detector.quantize`).

        ``margin``: frames whose detections could change if a score moved by this much
        (:func:`~detector.postprocess.fragile_frames`) are run again in float32, so int8 only
        decides where its errors cannot change a face, a label or an NMS winner; 0 trusts
        int8 everywhere. ``int8_frames`` and ``float32_frames`` count what ran how.
        """
        from detector.quantize import quantize

        if self.device.type != "cpu":
            raise ValueError(f"int8 runs on CPU; this detector is on {self.device}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        with _intra_op_threads(self.num_threads):
            self._int8 = quantize(self.model, calibration)  # int8 kernels ran 0.73x on the pruned widths
        self._float_backend = self.backend
        self.backend = "int8"
        self.int8_margin = margin

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB pictures -> (B, S, S, 3) uint8 model inputs."""
        return np.stack([resize_rgb(im, self.input_size) for im in images])

    @torch.inference_mode()
    def raw(self, batch: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, S, 3) uint8 inputs -> raw ``(loc (B, A, 4), scores (B, A, C))`` in float32."""
        frames = torch.as_tensor(batch)
        if frames.shape[0] == 0:
            a = self.spec.num_anchors
            return torch.zeros(0, a, 4), torch.zeros(0, a, self.spec.num_classes)
        if self.device.type == "cpu" and self.backend == "int8":
            loc, scores = self._run_int8(frames)
        elif self.device.type == "cpu":
            loc, scores = self._run_cpu(frames, self.backend)
        else:
            x = to_tensor(self._upload(frames)).contiguous(memory_format=torch.channels_last)
            # cuDNN autotunes once per batch shape; fp32 stays fp32 (TF32 would round the
            # convolutions' inputs to 10-bit mantissas: ~2.5e-2 off the reference on an H200)
            with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=False):
                loc, scores = self._forward(x.half() if self.half else x, self.backend)
        return loc.float(), scores.float()

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

    def suggested_batch_size(self, *, cpu: int = 16, most: int = 512, memory_share: float = 0.5) -> int:
        """Frames per batch for this device: ``cpu`` on CPU (larger batches gain nothing
        there); on CUDA the largest power of two up to ``most`` whose activations fit in
        ``memory_share`` of the GPU's free memory, measured with a forward pass."""
        if self.device.type != "cuda":
            return cpu
        probe = 8
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        self.raw(np.zeros((probe, self.input_size, self.input_size, 3), np.uint8))
        torch.cuda.synchronize(self.device)
        per_frame = max(1, (torch.cuda.max_memory_allocated(self.device) - base) // probe)
        free, _ = torch.cuda.mem_get_info(self.device)
        fits = int(free * memory_share // per_frame)
        size = 16
        while size * 2 <= min(most, fits):
            size *= 2
        logger.info("batch size %d on %s (%.1f MB per frame, %.1f GB free)", size, self.device, per_frame / 1e6, free / 1e9)
        return size

    @torch.inference_mode()
    def detect_prepared(self, batch: np.ndarray | torch.Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        """Detections for prepared inputs; ``image_sizes`` are the sources' ``(width, height)``."""
        loc, scores = self.raw(batch)
        # ~1 ms per batch of 16 on one thread. After a batch split over the workers it runs on
        # one, so that no OpenMP team of this thread spins on a core the next batch's workers need.
        _, on_workers = self._plan(len(loc))
        with _intra_op_threads(1 if on_workers else self.num_threads):
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

    # -- running the model -------------------------------------------------------------

    def _forward(self, x: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One model call: (N, 3, S, S) float, channels-last -> ``(loc, scores)``."""
        if backend == "fused":
            return self._fused_graph()(x)
        if backend == "int8":
            return self._int8(x)  # type: ignore[misc]
        return self.runner(x)

    def _run_int8(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """int8 outputs, with the fragile frames' replaced by float32 ones (see :meth:`quantize`)."""
        loc, scores = self._run_cpu(frames, "int8")
        again = torch.zeros(0, dtype=torch.long)
        if self.int8_margin > 0:
            with _intra_op_threads(1 if self.num_threads else None):  # ~0.1 ms a frame
                fragile = fragile_frames(
                    loc, scores, self.anchors, margin=self.int8_margin, score_threshold=self.score_threshold,
                    iou_threshold=self.iou_threshold, variances=self.spec.variances,
                )
            again = fragile.nonzero().flatten()
            if len(again):
                loc[again], scores[again] = self._run_cpu(frames[again], self._float_backend)
        self.float32_frames += len(again)
        self.int8_frames += len(frames) - len(again)
        return loc, scores

    def _fused_graph(self) -> FusedAizooSSD:
        if self._fused is None:
            with self._lock:
                if self._fused is None:
                    self._fused = FusedAizooSSD(self.runner)
        return self._fused

    def _run_cpu(self, frames: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, S, 3) uint8 in micro-batches, on the calling thread or on the worker threads.

        Each micro-batch is converted to float where it runs: in a worker, on its one thread.
        """
        size, on_workers = self._plan(frames.shape[0], INT8_MICRO_BATCH if backend == "int8" else self.micro_batch)
        chunks = frames.split(size)
        if not on_workers:
            with _intra_op_threads(self.num_threads):
                outs = [self._forward_frames(c, backend) for c in chunks]
        else:
            outs = list(self._worker_pool().map(functools.partial(self._forward_single_threaded, backend=backend), chunks))
            # The workers' torch.set_num_threads(1) also set the default new threads start from.
            torch.set_num_threads(torch.get_num_threads())
        if len(outs) == 1:
            return outs[0]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def _plan(self, batch: int, micro_batch: int | None = None) -> tuple[int, bool]:
        """(frames per model call, whether the calls go to the worker threads) for a batch."""
        micro_batch = micro_batch or self.micro_batch
        workers = self.num_threads or 1
        if workers == 1 or self.device.type != "cpu":
            return micro_batch, False
        size = min(micro_batch, -(-batch // workers))
        return size, -(-batch // size) > 1

    def _forward_frames(self, frames: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, S, S, 3) uint8 -> one model call."""
        return self._forward(to_tensor(frames).contiguous(memory_format=torch.channels_last), backend)

    def _forward_single_threaded(self, frames: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs in a worker thread: one intra-op thread (a per-thread OpenMP setting)."""
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)
        with torch.inference_mode():
            return self._forward_frames(frames, backend)

    def _worker_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="maskjobs-detector")
        return self._pool


@contextmanager
def _intra_op_threads(n: int | None) -> Iterator[None]:
    """Runs the block with ``n`` torch intra-op threads on this thread (``None``: as is)."""
    previous = torch.get_num_threads()
    if n is None or n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
