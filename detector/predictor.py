"""The face-mask detector: a loaded model, its anchors and post-processing, in batches."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.anchors import generate_anchors
from detector.detections import Detections
from detector.model import AizooSSD, flush_denormals_
from detector.postprocess import postprocess
from detector.preprocess import resize_rgb
from detector.prune import PruneReport, prune_dead_channels
from detector.tiling import TileGrid, cut_tiles, merge_tiles, resolve_grid, tile_boxes
from detector.runners import (
    BACKENDS,
    DEFAULT_INT8_MARGIN,
    INT8_MICRO_BATCH,
    CpuRunner,
    CudaRunner,
    FragileCheck,
    Int8Runner,
    Runner,
    build_runner,
    intra_op_threads,
    resolve_backend,
)
from detector.weights import LoadedWeights, load_weights

__all__ = ["BACKENDS", "DEFAULT_INT8_MARGIN", "DEFAULT_MICRO_BATCH", "INT8_MICRO_BATCH", "FaceMaskDetector"]

logger = logging.getLogger(__name__)

DEFAULT_MICRO_BATCH = 1


class FaceMaskDetector:
    """Runs the AIZOO SSD on RGB pictures of any size.

    Args:
        weights: a :class:`LoadedWeights` or a path to any supported weight file.
        device: ``"cpu"`` or ``"cuda"``; ``half`` uses fp16 on CUDA.
        score_threshold, iou_threshold: post-processing defaults of the reference.
        backend: how the model runs on CPU. ``"fused"``: :class:`~detector.fused.FusedAizooSSD`,
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
    copy (``pruned`` says what was removed). ``engine`` is the :class:`~detector.runners.Runner`
    that runs ``runner`` for ``backend`` (:mod:`detector.runners`, one module per backend),
    chosen once here; the fused graph is built from ``runner`` once, on first use.
    :meth:`quantize` switches a CPU detector to an int8 copy of ``model`` (the full widths:
    the int8 kernels ran 0.73x on the pruned ones; frames run again in float32 use the float
    engine) (backend ``"int8"``).

    This class only loads the weights, builds the engine, prepares the inputs, calls the
    engine and post-processes its outputs.
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
        self.device = torch.device(device)
        self.backend = resolve_backend(backend, self.device)  # chosen once; quantize() may switch to int8
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be None or at least 1, got {num_threads}")
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be at least 1, got {micro_batch}")
        loaded = weights if isinstance(weights, LoadedWeights) else load_weights(weights)
        self.weights = loaded
        self.spec = loaded.spec
        self.half = bool(half and self.device.type == "cuda")
        self.model = _placed_model(loaded, self.device, half=self.half)
        self.runner = self.model
        self.pruned: PruneReport | None = None
        if prune and not self.half:  # fp16 on tensor cores ran 0.82x pruned (H200): odd channel counts
            runner, self.pruned = prune_dead_channels(self.model)
            self.runner = runner.to(memory_format=torch.channels_last)
        self.anchors = generate_anchors(self.spec).to(self.device)
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.num_threads = num_threads
        self.micro_batch = micro_batch
        self.engine: Runner = self._float_engine()

    def _float_engine(self) -> Runner:
        """A new engine of the float backend (``backend``): rebuilt, never copied (threads, packed kernels)."""
        return build_runner(
            self.backend, self.runner, device=self.device, half=self.half, num_threads=self.num_threads,
            micro_batch=self.micro_batch,
        )

    def __getstate__(self) -> dict[str, Any]:
        if self.backend == "int8":
            raise TypeError("an int8 FaceMaskDetector cannot be copied; quantize the copy instead")
        state = self.__dict__.copy()
        state.pop("engine")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.engine = self._float_engine()

    def close(self) -> None:
        """Stops the worker threads, if any were started (they also stop at exit)."""
        self.engine.close()

    def quantize(self, calibration: np.ndarray, *, margin: float = DEFAULT_INT8_MARGIN) -> None:
        """Runs the model in int8 from now on (CPU only), calibrated on ``calibration``:
        (N, S, S, 3) uint8 RGB frames already resized to the input (see :mod:`detector.quantize`).

        ``margin``: frames whose detections could change if a score moved by this much
        (:func:`~detector.postprocess.fragile_frames`) are run again in float32, so int8 only
        decides where its errors cannot change a face, a label or an NMS winner; 0 trusts
        int8 everywhere. ``int8_frames`` and ``float32_frames`` count what ran how.
        """
        if self.device.type != "cpu":
            raise ValueError(f"int8 runs on CPU; this detector is on {self.device}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        # quantizing again re-runs fragile frames on the same float engine, never on int8
        fallback = self.engine.fallback if isinstance(self.engine, Int8Runner) else self.engine
        if not isinstance(fallback, CpuRunner):
            raise TypeError(f"int8 needs a CPU float engine to run fragile frames again, not {type(fallback).__name__}")
        check = FragileCheck(
            anchors=self.anchors, margin=margin, score_threshold=self.score_threshold,
            iou_threshold=self.iou_threshold, variances=self.spec.variances,
        )
        self.engine = Int8Runner.calibrated(self.model, calibration, fallback=fallback, check=check)
        self.backend = "int8"

    @property
    def int8_margin(self) -> float | None:
        """The margin of :meth:`quantize`; ``None`` before it."""
        return self.engine.check.margin if isinstance(self.engine, Int8Runner) else None

    @property
    def int8_frames(self) -> int:
        """Frames whose int8 outputs were kept (0 unless quantized)."""
        return self.engine.int8_frames if isinstance(self.engine, Int8Runner) else 0

    @property
    def float32_frames(self) -> int:
        """int8 frames run again in float32: their decisions were fragile (0 unless quantized)."""
        return self.engine.float32_frames if isinstance(self.engine, Int8Runner) else 0

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
        loc, scores = self.engine.raw(frames)
        return loc.float(), scores.float()

    def suggested_batch_size(self, *, cpu: int = 16, most: int = 512, memory_share: float = 0.5) -> int:
        """Frames per batch for this device: ``cpu`` on CPU (larger batches gain nothing
        there); on CUDA the largest power of two up to ``most`` whose activations fit in
        ``memory_share`` of the GPU's free memory, measured with a forward pass."""
        if self.device.type != "cuda" or not isinstance(self.engine, CudaRunner):
            return cpu
        return self.engine.suggested_batch_size(self.input_size, most=most, memory_share=memory_share)

    @torch.inference_mode()
    def detect_prepared(self, batch: np.ndarray | torch.Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        """Detections for prepared inputs; ``image_sizes`` are the sources' ``(width, height)``."""
        loc, scores = self.raw(batch)
        with intra_op_threads(self.engine.postprocess_threads(len(loc))):
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

    def detect_tiles_prepared(
        self, batch: np.ndarray | torch.Tensor, tiles: Sequence[np.ndarray], frame_sizes: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        """Detections of tiled frames, in one model call for all of their tiles.

        Args:
            batch: (sum T_i, S, S, 3) uint8 inputs: frame 0's tiles, then frame 1's ...
            tiles: per frame, its (T_i, 4) tile boxes in frame pixels (:func:`~detector.tiling.tile_boxes`).
            frame_sizes: per frame ``(width, height)``.
        Returns:
            One :class:`Detections` per frame, boxes in frame pixels, merged across its tiles
            (:func:`~detector.tiling.merge_tiles`: one detection per face).
        """
        sizes = [(int(x2 - x1), int(y2 - y1)) for t in tiles for x1, y1, x2, y2 in t.tolist()]
        if len(sizes) != len(batch):
            raise ValueError(f"{len(batch)} inputs for {len(sizes)} tiles")
        per_tile = self.detect_prepared(batch, sizes)
        out, start = [], 0
        for t, (w, h) in zip(tiles, frame_sizes):
            out.append(merge_tiles(per_tile[start : start + len(t)], t, w, h, iou_threshold=self.iou_threshold))
            start += len(t)
        return out

    def prepare_tiles(
        self, images: Sequence[np.ndarray], grid: TileGrid | str | None, *, target_px: float = 32.0
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """RGB pictures -> ``(inputs (sum T_i, S, S, 3) uint8, tile boxes per picture)`` for
        ``grid`` (a :class:`~detector.tiling.TileGrid`, ``"auto"`` for ``target_px`` faces, or
        ``None``: whole pictures)."""
        tiles = []
        for im in images:
            g = resolve_grid(grid, im.shape[1], im.shape[0], target_px=target_px, input_size=self.input_size)
            whole = np.array([[0, 0, im.shape[1], im.shape[0]]], np.int64)
            tiles.append(tile_boxes(im.shape[1], im.shape[0], g) if g is not None else whole)
        batch = np.empty((sum(len(t) for t in tiles), self.input_size, self.input_size, 3), np.uint8)
        start = 0
        for im, t in zip(images, tiles):
            cut_tiles(im, t, self.input_size, out=batch[start : start + len(t)])
            start += len(t)
        return batch, tiles

    def detect(
        self, images: Sequence[np.ndarray], *, tiles: TileGrid | str | None = None, target_px: float = 32.0
    ) -> list[Detections]:
        """Detections for RGB ``(H, W, 3)`` uint8 pictures, boxes in their pixels; ``tiles``:
        also run overlapping tiles of each (a :class:`~detector.tiling.TileGrid`, or ``"auto"``
        so that ``target_px`` wide faces are reliably found)."""
        if not images:
            return []
        if tiles is not None:
            batch, boxes = self.prepare_tiles(images, tiles, target_px=target_px)
            return self.detect_tiles_prepared(batch, boxes, [(im.shape[1], im.shape[0]) for im in images])
        sizes = [(im.shape[1], im.shape[0]) for im in images]
        return self.detect_prepared(self.prepare(images), sizes)


def _placed_model(loaded: LoadedWeights, device: torch.device, *, half: bool) -> AizooSSD:
    """The loaded model on ``device`` in eval mode, channels-last, subnormal weights zeroed
    (:func:`~detector.model.flush_denormals_`), fp16 if ``half``."""
    model = loaded.model.to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    flushed = flush_denormals_(model)
    if flushed:
        logger.debug("zeroed %d subnormal weights of %s", flushed, loaded.path)
    if half:
        model = model.half()
    return model
