"""Detector throughput on CPU against OpenCV DNN on the same model, side by side in one run.

    python -m benchmarks.bench_detector [--weights FILE] [--seconds S] [--rounds R] [--threads N]

Every row runs the same frames (the shared photos panned and zoomed into 260x260 RGB
frames, or random frames) for ``--seconds`` per round; rounds interleave all rows in a
rotating order, and the table reports medians over rounds: frames/s (wall clock), frames
per CPU-second of the process (less sensitive to other processes on a shared machine) and
the ratio to OpenCV DNN at the same batch size (median of the per-round ratios), for
``detect_prepared`` also to OpenCV DNN followed by the same post-processing. OpenCV
runs the published Caffe pair with ``cv2.setNumThreads`` equal to ``--threads``; every
torch row uses the same number of threads.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.common import caffe_pair, default_weights, load_photos, machine
from detector.detections import Detections
from detector.postprocess import postprocess
from detector.predictor import FaceMaskDetector
from detector.weights import load_weights

FRAME_SOURCE_SIZE = (640, 480)  # (width, height) the frames are said to come from, for detect_prepared


# -- inputs --------------------------------------------------------------------------------


def make_frames(n: int, size: int, *, seed: int = 0, random_only: bool = False) -> np.ndarray:
    """(n, size, size, 3) uint8 RGB frames: pans and zooms over the shared photos.

    Falls back to random frames when the photos are missing (or ``random_only``).
    """
    rng = np.random.default_rng(seed)
    photos = [] if random_only else load_photos()
    if not photos:
        return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    frames = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        scale = rng.uniform(0.6, 1.0)
        ch, cw = int(h * scale), int(w * scale)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = img[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        frames.append(cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_LINEAR))
    return np.stack(frames)


# -- the runtimes --------------------------------------------------------------------------


class OpenCVDNN:
    """The reference: OpenCV DNN on the published Caffe pair, frames via ``blobFromImages``."""

    def __init__(self, prototxt: Path, caffemodel: Path, size: int) -> None:
        self.net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
        self.size = size

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        blob = cv2.dnn.blobFromImages(list(frames), scalefactor=1 / 255.0, size=(self.size, self.size))
        self.net.setInput(blob)
        loc, cls = self.net.forward(["loc_branch_concat", "cls_branch_concat"])
        return loc, cls


class MainBaseline(FaceMaskDetector):
    """The detector as it was on main: plain module, channels-last, subnormal weights kept,
    the whole batch in one call on the calling thread's intra-op threads."""

    def __init__(self, weights: Path, threads: int) -> None:
        super().__init__(weights, backend="eager", num_threads=threads, micro_batch=1 << 30)
        self.engine.module = self._forward  # this variant's model call, on the eager engine's micro-batches
        self._unflushed = load_weights(weights).model.eval().to(memory_format=torch.channels_last)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._unflushed(x)


class ContiguousEager(FaceMaskDetector):
    """The plain module on NCHW-contiguous tensors (no channels-last)."""

    def __init__(self, weights: Path, threads: int) -> None:
        super().__init__(weights, backend="eager", num_threads=threads)
        self.model.to(memory_format=torch.contiguous_format)
        self.engine.module = self._forward  # this variant's model call, on the eager engine's micro-batches

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x.contiguous())


class PerShapeGraph(FaceMaskDetector):
    """The plain module turned into a graph per input shape by ``build(model, example)``."""

    def __init__(self, weights: Path, threads: int, build: Callable[[torch.nn.Module, torch.Tensor], Callable]) -> None:
        super().__init__(weights, backend="eager", num_threads=threads)
        self.engine.module = self._forward  # this variant's model call, on the eager engine's micro-batches
        self._build = build
        self._graphs: dict[tuple[int, ...], Callable] = {}
        self._graph_lock = threading.Lock()
        self.build_seconds: dict[tuple[int, ...], float] = {}

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = tuple(x.shape)
        graph = self._graphs.get(key)
        if graph is None:
            with self._graph_lock:
                graph = self._graphs.get(key)
                if graph is None:
                    start = time.perf_counter()
                    graph = self._build(self.model, x)
                    graph(x)  # compile / optimise now, not inside a timed call
                    self.build_seconds[key] = time.perf_counter() - start
                    self._graphs[key] = graph
        return graph(x)


def _jit_freeze(model: torch.nn.Module, example: torch.Tensor) -> Callable:
    with torch.no_grad():
        return torch.jit.freeze(torch.jit.trace(model, example, check_trace=False).eval())


def _jit_freeze_ofi(model: torch.nn.Module, example: torch.Tensor) -> Callable:
    with torch.no_grad():
        return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, example, check_trace=False).eval()))


def _inductor(model: torch.nn.Module, example: torch.Tensor) -> Callable:
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # constant-fold and prepack the weights, as for inference
    return torch.compile(model, dynamic=False)


# -- measuring -----------------------------------------------------------------------------


@dataclass
class Row:
    variant: str
    call: str
    run: Callable[[np.ndarray], object]
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # vs OpenCV DNN's forward, same round
    ratios_post: list[float] = field(default_factory=list)  # vs OpenCV DNN + post-processing, same round
    check: str = ""


def _measure(run: Callable[[np.ndarray], object], frames: np.ndarray, seconds: float) -> tuple[float, float]:
    """(frames per wall second, frames per process CPU-second) over at least ``seconds``."""
    calls = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while True:
        run(frames)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 2:
            break
    cpu = max(time.process_time() - cpu_start, 1e-9)
    return calls * len(frames) / elapsed, calls * len(frames) / cpu


def _max_diff(ours: tuple[torch.Tensor, torch.Tensor], ref: tuple[np.ndarray, np.ndarray]) -> float:
    return max(float(np.abs(o.numpy().reshape(r.shape) - r).max()) for o, r in zip(ours, ref))


def build_rows(args: argparse.Namespace, reference: OpenCVDNN, batch: np.ndarray,
               extra: dict[str, FaceMaskDetector]) -> tuple[list[Row], list[FaceMaskDetector]]:
    """Every runtime as (raw, detect_prepared) rows, OpenCV DNN first, post-processing alone
    last; and the detectors built for them."""
    t, weights = args.threads, args.weights
    detectors: dict[str, FaceMaskDetector] = {
        f"fused (default), num_threads={t}": FaceMaskDetector(weights, num_threads=t),
        "fused (default), num_threads=None": FaceMaskDetector(weights),
        "fused, dead filters kept (prune=False)": FaceMaskDetector(weights, num_threads=t, prune=False),
        "fused, whole batch per call": FaceMaskDetector(weights, num_threads=t, micro_batch=1 << 30),
        "eager channels-last": FaceMaskDetector(weights, backend="eager", num_threads=t),
        "eager contiguous": ContiguousEager(weights, t),
        "jit trace+freeze": PerShapeGraph(weights, t, _jit_freeze),
        "jit trace+freeze+optimize_for_inference": PerShapeGraph(weights, t, _jit_freeze_ofi),
        "main before this work": MainBaseline(weights, t),
    }
    if args.compile:
        detectors["torch.compile (inductor, freezing)"] = PerShapeGraph(weights, t, _inductor)
    detectors.update(extra)
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",")]
        detectors = {k: v for k, v in detectors.items() if any(w in k for w in wanted)}

    ref_out = reference(batch)
    sizes = [FRAME_SOURCE_SIZE] * len(batch)
    default = FaceMaskDetector(weights)
    a, c = default.spec.num_anchors, default.spec.num_classes

    def post(loc: torch.Tensor, scores: torch.Tensor) -> list[Detections]:
        return postprocess(loc, scores, default.anchors, sizes, score_threshold=default.score_threshold,
                           iou_threshold=default.iou_threshold, variances=default.spec.variances,
                           class_names=default.spec.class_names)

    def reference_detect(x: np.ndarray) -> list[Detections]:
        loc, cls = reference(x)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # else torch's idle OpenMP team spins on the cores OpenCV's pool needs next
        try:
            return post(torch.from_numpy(loc).reshape(len(x), a, 4), torch.from_numpy(cls).reshape(len(x), a, c))
        finally:
            torch.set_num_threads(threads)

    rows = [Row("OpenCV DNN", "forward", reference), Row("OpenCV DNN + our post-processing", "detect", reference_detect)]
    for name, det in detectors.items():
        rows.append(Row(name, "raw", det.raw, check=f"max |diff| {_max_diff(det.raw(batch), ref_out):.1e}"))
        rows.append(Row(name, "detect_prepared", lambda x, det=det: det.detect_prepared(x, sizes)))
        if isinstance(det, PerShapeGraph):
            rows[-1].check = "built in " + ", ".join(f"{s:.1f} s" for s in det.build_seconds.values())
    raw_out = default.raw(batch)
    rows.append(Row("post-processing alone", "postprocess", lambda _: post(*raw_out)))
    built = [d for d in detectors.values() if d not in extra.values()]
    return rows, [*built, default]


def run_batch(args: argparse.Namespace, reference: OpenCVDNN, frames: np.ndarray, b: int,
              extra: dict[str, FaceMaskDetector]) -> list[Row]:
    batch = np.ascontiguousarray(frames[:b])
    rows, detectors = build_rows(args, reference, batch, extra)
    for row in rows:  # warm-up: pack / trace / compile, fill caches
        for _ in range(2):
            row.run(batch)
    for r in range(args.rounds):
        shift = r % len(rows)
        order = rows[shift:] + rows[:shift]
        for row in order:
            wall, cpu = _measure(row.run, batch, args.seconds)
            row.wall.append(wall)
            row.cpu.append(cpu)
        for row in rows:
            row.ratios.append(row.wall[-1] / rows[0].wall[-1])
            row.ratios_post.append(row.wall[-1] / rows[1].wall[-1])
    for det in detectors:
        det.close()
    return rows


def _print_table(b: int, rows: list[Row]) -> None:
    print(f"\nbatch {b}")
    print(f"  {'variant':<42} {'call':<16} {'frames/s':>9} {'frames/CPU-s':>13} {'x OpenCV':>9} {'x OpenCV+post':>14}  check")
    for row in rows:
        wall, cpu, ratio = (statistics.median(v) for v in (row.wall, row.cpu, row.ratios))
        post = f"{statistics.median(row.ratios_post):14.2f}" if row.call in ("detect", "detect_prepared") else " " * 14
        print(f"  {row.variant:<42} {row.call:<16} {wall:9.1f} {cpu:13.1f} {ratio:9.2f} {post}  {row.check}")


def main(argv: list[str] | None = None) -> None:
    default_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_detector", description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=default_weights(),
                   help="our detector's weights (default: $MASKJOBS_WEIGHTS, else the shared Caffe model)")
    p.add_argument("--seconds", type=float, default=1.0, help="seconds per row and round (default 1)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported (default 5)")
    p.add_argument("--threads", type=int, default=default_threads,
                   help=f"threads for OpenCV and torch alike (default: this process's CPUs, {default_threads})")
    p.add_argument("--batch-sizes", default="1,16", help="comma-separated (default 1,16)")
    p.add_argument("--variants", default="", help="comma-separated substrings selecting the torch variants")
    p.add_argument("--compile", action="store_true", help="also torch.compile (needs a C++ compiler; slow to build)")
    p.add_argument("--random-frames", action="store_true", help="random frames instead of the shared photos")
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                   help="also the int8 variant, with its agreement with OpenCV (default: on; needs the photos)")
    p.add_argument("--int8-frames", type=int, default=400, help="frames the int8 agreement is checked on")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    prototxt, caffemodel = caffe_pair(args.weights)
    reference = OpenCVDNN(prototxt, caffemodel, size=260)
    batch_sizes = [int(s) for s in args.batch_sizes.split(",")]
    frames = make_frames(max(batch_sizes), 260, random_only=args.random_frames)

    print(f"machine: {machine()}")
    print(f"weights: {args.weights}; OpenCV on {caffemodel.name}; threads: {args.threads} "
          f"(torch.set_num_threads, cv2.setNumThreads); {args.rounds} rounds x {args.seconds:g} s per row, medians")
    extra: dict[str, FaceMaskDetector] = {}
    photos = load_photos()
    if args.int8 and photos:
        extra["int8 (detector.quantize, --int8)"] = _int8_agreement(args, reference, photos)
    for b in batch_sizes:
        _print_table(b, run_batch(args, reference, frames, b, extra))


def _int8_agreement(args: argparse.Namespace, reference: OpenCVDNN, photos: list[np.ndarray]) -> FaceMaskDetector:
    """Builds the int8 detector and prints how often its detections match OpenCV's (and fp32's)."""
    from benchmarks.int8 import varied_frames
    from detector.compare import same_faces

    calibration = varied_frames(photos, 32, 260, seed=100)
    int8 = FaceMaskDetector(args.weights, num_threads=args.threads)
    start = time.perf_counter()
    int8.quantize(calibration)
    calibrated = time.perf_counter() - start
    fp32 = FaceMaskDetector(args.weights, num_threads=args.threads)
    frames = varied_frames(photos, args.int8_frames, 260, seed=7)
    sizes = [(260, 260)] * 16
    matches = {"int8": 0, "fused fp32": 0}
    faces = 0
    for start in range(0, len(frames), 16):
        chunk = frames[start : start + 16]
        loc, cls = reference(chunk)
        a = fp32.spec.num_anchors
        ref = postprocess(torch.from_numpy(loc).reshape(len(chunk), a, 4), torch.from_numpy(cls).reshape(len(chunk), a, -1),
                          fp32.anchors, sizes[: len(chunk)])
        faces += sum(len(d) for d in ref)
        for name, det in (("int8", int8), ("fused fp32", fp32)):
            got = det.detect_prepared(chunk, sizes[: len(chunk)])
            matches[name] += sum(same_faces(r, g) for r, g in zip(ref, got))
    print(f"detections vs OpenCV on {len(frames)} varied frames ({faces} faces; same count, label, IoU >= 0.7): "
          + ", ".join(f"{k} {v}/{len(frames)} ({100 * v / len(frames):.2f} %)" for k, v in matches.items())
          + f"; int8 calibrated on 32 other frames in {calibrated:.1f} s")
    return int8


if __name__ == "__main__":
    main()
