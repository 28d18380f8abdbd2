"""The detector as a Ray actor: loads the model once, maps a batch dict to a batch dict.

The driver only converts and ships weights (numpy); torch is imported by the actors.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.spec import ModelSpec
from detector.weights import ConvertedWeights, LoadedWeights
from jobs.config import DetectorConfig
from jobs import faults
from jobs.pipeline.records import DecodedBatch, DetectedBatch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsPayload:
    """Weights as plain arrays (never a pickled module), shipped once to every actor."""

    spec: ModelSpec
    state: dict[str, np.ndarray]
    sha256: str
    format: str
    path: str

    @classmethod
    def from_converted(cls, weights: ConvertedWeights) -> WeightsPayload:
        return cls(weights.spec, weights.state, weights.sha256, weights.format, str(weights.path))

    @classmethod
    def from_loaded(cls, loaded: LoadedWeights) -> WeightsPayload:
        state = {k: v.detach().cpu().numpy() for k, v in loaded.model.state_dict().items()}
        return cls(loaded.spec, state, loaded.sha256, loaded.format, str(loaded.path))

    def to_loaded(self) -> LoadedWeights:
        from detector.weights.convert import model_from_state

        return LoadedWeights(model_from_state(self.state, self.spec), self.spec, Path(self.path), self.format, self.sha256)


class DetectorActor:
    """Ray actor body. ``__call__`` takes a decoded batch (:class:`DecodedBatch`) and returns
    its detections (:class:`DetectedBatch`): ``{video, frame, time_s (B,), counts (B,),
    labels (K,), scores (K,), boxes (K, 4)}``."""

    def __init__(self, weights: WeightsPayload, config: DetectorConfig, *, threads: int | None, use_gpu: bool) -> None:
        """``config.int8``: batches are refused until :meth:`calibrate` has run (the driver
        calls it first), so no batch is ever detected in float32 by mistake."""
        if not use_gpu:
            _sleeping_openmp_threads()
        import torch

        from detector.predictor import FaceMaskDetector

        device = config.device
        if device == "auto":
            device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.detector = FaceMaskDetector(
            weights.to_loaded(),
            device=device,
            half=config.half,
            score_threshold=config.score_threshold,
            iou_threshold=config.iou_threshold,
            num_threads=threads if device == "cpu" else None,
        )
        self.calibrated = not config.int8
        self.int8_margin = config.int8_margin
        logger.info("detector actor ready on %s (threads=%s)", device, threads)

    def calibrate(self, *frames: np.ndarray) -> str:
        """Switches to int8, calibrated on the frames of all ``frames`` arrays, each
        (k, S, S, 3) uint8; with no frames at all it stays float32. Returns the backend used."""
        stacked = [f for f in frames if len(f)]
        if stacked:
            self.detector.quantize(np.concatenate(stacked), margin=self.int8_margin)
        else:
            logger.warning("no calibration frames: the detector stays float32")
        self.calibrated = True
        return self.detector.backend

    def __call__(self, batch: DecodedBatch) -> DetectedBatch:
        faults.in_detector()  # test-only: a busy or hung detector, when $MASKJOBS_TEST_FAULT asks
        if not self.calibrated:
            raise RuntimeError("int8 detector actor used before calibrate()")
        sizes = list(zip(batch["width"].tolist(), batch["height"].tolist()))
        clock = time.process_time()
        if not len(batch["frame"]):
            dets = []
        elif "per_frame" in batch:  # tiled: every frame's pictures in one model call, merged per frame
            tiles = np.split(batch["tiles"], np.cumsum(batch["per_frame"])[:-1])
            dets = self.detector.detect_tiles_prepared(batch["frames"], tiles, sizes)
        else:
            dets = self.detector.detect_prepared(batch["frames"], sizes)
        counts = np.array([len(d) for d in dets], dtype=np.int32)
        n = len(counts)
        out = DetectedBatch(
            video=batch["video"],
            frame=batch["frame"],
            time_s=batch["time_s"],
            counts=counts,
            labels=np.concatenate([d.labels for d in dets]) if dets else np.zeros(0, np.int64),
            scores=np.concatenate([d.scores for d in dets]) if dets else np.zeros(0, np.float32),
            boxes=np.concatenate([d.boxes for d in dets]) if dets else np.zeros((0, 4), np.float32),
            decode_cpu_s=batch.get("decode_cpu_s", np.zeros(n, np.float32)),
            detect_cpu_s=np.full(n, (time.process_time() - clock) / max(n, 1), np.float32),
        )
        if "damaged" in batch:  # a video cut off mid-recording: the driver marks it partial
            out["damaged"] = batch["damaged"]
        return out

    def frame_counts(self) -> dict[str, Any]:
        """The backend, frames whose int8 outputs were kept, and frames run again in float32."""
        return {
            "backend": self.detector.backend, "int8": self.detector.int8_frames,
            "float32": self.detector.float32_frames,
        }

    def ping(self) -> str:
        return self.detector.device.type

    def where(self) -> Any:
        """Where this actor runs (:class:`jobs.pipeline.placement.Started`)."""
        from jobs.pipeline.placement import where

        return where()

    def render(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """:func:`jobs.results.render.render_video` in this actor's process (call it with
        ``num_returns="streaming"``). After the last batch the driver hands the actors render
        work, so that the finishing pass needs no new worker process (~1 s of start-up on 2
        busy cores) for the CPU each actor holds."""
        from jobs.results.render import render_video

        yield from render_video(*args, **kwargs)

    def batch_size(self) -> int:
        """Frames per batch this actor's device wants (see ``suggested_batch_size``)."""
        return self.detector.suggested_batch_size()


OPENMP_WAIT_POLICY = "PASSIVE"


def _sleeping_openmp_threads() -> None:
    """Makes this process's OpenMP threads sleep when idle instead of spinning.

    GNU OpenMP (torch's CPU runtime) keeps a team's threads spinning for a while after each
    parallel region by default. A CPU actor shares its cores with decode tasks, and its own
    worker threads run whole frames beside the calling thread's post-processing: spinning
    threads took cores that had work. Measured in ``maskjobs run --int8`` on the 1080p
    benchmark video (2 cores): the actor's CPU time 24.2 -> 18.4 s, the run 22.9 -> 19.8 s;
    float32 runs were unchanged. The runtime reads ``OMP_WAIT_POLICY`` once, when torch
    loads it, so this must run before torch's import; a value the user set is kept.
    """
    if "torch" in sys.modules:
        logger.debug("torch already imported in this worker; OMP_WAIT_POLICY left as it is")
        return
    os.environ.setdefault("OMP_WAIT_POLICY", OPENMP_WAIT_POLICY)
