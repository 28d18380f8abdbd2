"""End to end: ``maskjobs run`` against the per-frame OpenCV loop, side by side in one run.

    python -m benchmarks.bench_e2e                      # 2,700 frames of 720p and of 1080p H.264
    python -m benchmarks.bench_e2e --sizes 1080p --rounds 3 --frames 900
    python -m benchmarks.bench_e2e --scene walkers --sizes 1080p  # four faces walking, long GOP
    python -m benchmarks.bench_e2e --video a.mp4 --video b.mov   # your own videos instead
    python -m benchmarks.bench_e2e --help

For each size it generates (once, cached in ``--workdir``) an H.264 video of the shared photos
panned and zoomed, encoded as cameras and phones do (x264 ``veryfast``: CABAC, B-frames; or with
``--scene walkers`` four faces walking across, overlapping and leaving the picture, x264 High
profile with 250-frame GOPs: see ``benchmarks.videos.ensure_walkers_video``), then measures, in this order and interleaved over ``--rounds``:

- **baseline**: the seed's per-frame loop, AIZOO's fastest CPU path: ``cv2.VideoCapture``
  reads a frame, it goes to RGB, ``cv2.dnn.blobFromImage`` resizes it to 260x260 and scales by
  1/255, OpenCV DNN runs the published Caffe model, then the same post-processing as ours;
- **decode alone**: ``jobs.pipeline.decode.decode_shard`` over the whole video in this process (decord
  reads, resizes to 260x260): the most frames per second a single decoder can feed;
- **detector alone**: ``FaceMaskDetector.detect_prepared`` on batches of 16 resized frames of the
  video, float32 and int8 (calibrated on 32 other frames of the video), against OpenCV DNN plus
  post-processing per frame, all on all this process's CPUs;
- **maskjobs run** and **maskjobs run --int8**: the command as a user runs it (``maskjobs run
  VIDEO --out DIR``, embedded local Ray, every other default), wall clock from the process's
  start to its exit, so Python's start, loading the weights, Ray's start-up and shutdown all
  count. Ray's own start-up is read from the ``timings`` in the job's ``job.json``.

Each job's detections are then compared with the baseline's, frame by frame: **equal** (same
faces with the same labels, boxes within 1 px, scores within 1e-3: what float32 must meet) and
**same faces** (same count and labels, boxes at IoU >= 0.7: what int8 is held to). Ratios are
against the baseline of the same round; the table gives medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from benchmarks.common import caffe_pair, decoded_batches
from benchmarks.videos import SIZES, add_video_arguments, ensure_video, ensure_walkers_video, start
from detector.compare import equal, same_faces
from detector.detections import Detections
from detector.postprocess import postprocess
from detector.predictor import FaceMaskDetector

logger = logging.getLogger(__name__)

class Reference:
    """OpenCV DNN on the published Caffe pair plus our post-processing: AIZOO's CPU path."""

    def __init__(self, weights: Path) -> None:
        prototxt, caffemodel = caffe_pair(weights)
        self.net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
        spec_source = FaceMaskDetector(weights)
        self.spec = spec_source.spec
        self.anchors = spec_source.anchors
        self.score_threshold = spec_source.score_threshold
        self.iou_threshold = spec_source.iou_threshold

    def detect(self, rgb: list[np.ndarray], sizes: list[tuple[int, int]]) -> list[Detections]:
        s = self.spec.input_size
        blob = cv2.dnn.blobFromImages(rgb, scalefactor=1 / 255.0, size=(s, s))
        self.net.setInput(blob)
        loc, cls = self.net.forward(["loc_branch_concat", "cls_branch_concat"])
        n, a, c = len(rgb), self.spec.num_anchors, self.spec.num_classes
        return postprocess(
            torch.from_numpy(loc).reshape(n, a, 4), torch.from_numpy(cls).reshape(n, a, c), self.anchors, sizes,
            score_threshold=self.score_threshold, iou_threshold=self.iou_threshold,
            variances=self.spec.variances, class_names=self.spec.class_names,
        )


def baseline_loop(path: Path, ref: Reference) -> tuple[float, list[Detections]]:
    """The per-frame loop; returns (seconds, detections per frame)."""
    out = []
    t0 = time.perf_counter()
    cap = cv2.VideoCapture(str(path))
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        out.extend(ref.detect([rgb], [(rgb.shape[1], rgb.shape[0])]))
    cap.release()
    return time.perf_counter() - t0, out


def decode_alone(path: Path, frames: int) -> float:
    """Frames per second of one decode task (decord, resize to 260x260) in this process."""
    t0 = time.perf_counter()
    n = sum(len(b["frame"]) for b in decoded_batches(path, frames, 16))
    return n / (time.perf_counter() - t0)


def detector_alone(path: Path, frames_total: int, ref: Reference, weights: Path, seconds: float) -> tuple[float, float, float]:
    """(ours float32, ours int8, OpenCV DNN + post-processing) frames per second on the first
    256 resized frames of ``path`` (all of a shorter video); int8 is calibrated on 32 frames
    from the video's second half (past those 256; a shorter video's own first 32)."""
    frames = np.concatenate([b["frames"] for b in decoded_batches(path, min(256, frames_total), 16)])
    later = list(range(max(256, frames_total // 2), frames_total, max(1, frames_total // 64)))
    calibration = np.concatenate([b["frames"] for b in decoded_batches(path, frames_total, 16, later)])[:32] if later else frames[:32]
    ours = FaceMaskDetector(weights, num_threads=os.cpu_count() or 1)
    int8 = FaceMaskDetector(weights, num_threads=os.cpu_count() or 1)
    int8.quantize(calibration)

    def run(det: FaceMaskDetector) -> int:
        for i in range(0, len(frames), 16):
            batch = frames[i : i + 16]
            det.detect_prepared(batch, [(1, 1)] * len(batch))
        return len(frames)

    def run_ref() -> int:
        torch.set_num_threads(1)  # torch only post-processes here; keep its OpenMP team off OpenCV's cores
        for f in frames:
            ref.detect([f], [(1, 1)])
        return len(frames)

    def rate(fn) -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += fn()
        return n / (time.perf_counter() - t0)

    threads = torch.get_num_threads()
    try:
        return rate(lambda: run(ours)), rate(lambda: run(int8)), rate(run_ref)
    finally:
        torch.set_num_threads(threads)


@dataclass
class RunResult:
    seconds: float
    ray_start_s: float
    frames: pd.DataFrame


def maskjobs_run(path: Path, out: Path, weights: Path, *flags: str) -> RunResult:
    exe = shutil.which("maskjobs", path=str(Path(sys.executable).parent)) or "maskjobs"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "MASKJOBS_WEIGHTS": str(weights)}
    t0 = time.perf_counter()
    proc = subprocess.run([exe, "run", str(path), "--out", str(out), *flags], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"maskjobs run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    job = json.loads((out / "job.json").read_text())
    frames = pd.read_parquet(out / "frames").sort_values("frame").reset_index(drop=True)
    return RunResult(seconds, float(job.get("timings", {}).get("ray_start_s", float("nan"))), frames)


def agreement(frames: pd.DataFrame, ref: list[Detections]) -> tuple[int, int, int]:
    """(frames whose detections equal the reference's, frames with the same faces, frames compared)."""
    same = alike = 0
    for row in frames.itertuples():
        want = ref[row.frame]
        got = Detections(
            np.array([[d["x1"], d["y1"], d["x2"], d["y2"]] for d in row.detections], np.float32).reshape(-1, 4),
            np.array([d["score"] for d in row.detections], np.float32),
            np.array([want.class_names.index(d["label"]) for d in row.detections], np.int64),
            want.class_names,
        )
        same += equal(want, got)
        alike += same_faces(want, got)
    return same, alike, len(frames)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["720p", "1080p"], choices=sorted(SIZES))
    p.add_argument("--scene", choices=["pan", "walkers"], default="pan",
                   help="generated videos: the photos panned and zoomed (30 fps, a keyframe every 60), "
                        "or four faces walking across (25 fps, a keyframe every 250)")
    add_video_arguments(p)
    p.add_argument("--rounds", type=int, default=1, help="baseline and the maskjobs runs, alternated")
    p.add_argument("--seconds", type=float, default=5.0, help="per detector-alone measurement")
    args = p.parse_args(argv)
    weights = start(args)
    cv2.setNumThreads(os.cpu_count() or 1)
    ref = Reference(weights)
    print(f"weights {weights}; {args.rounds} round(s)\n")
    if args.video:
        videos = [(v.name, v.resolve()) for v in args.video]
    elif args.scene == "walkers":
        videos = [(f"{size} H.264, walkers", ensure_walkers_video(args.workdir, size, args.frames)) for size in args.sizes]
    else:
        videos = [(f"{size} H.264", ensure_video(args.workdir, size, args.frames)) for size in args.sizes]
    modes = {"float32": (), "int8": ("--int8",)}
    summary = []
    for label, video in videos:
        base_fps: list[float] = []
        fps: dict[str, list[float]] = {m: [] for m in modes}
        ratio: dict[str, list[float]] = {m: [] for m in modes}
        ray_start: list[float] = []
        agree: dict[str, tuple[int, int, int]] = {}
        for r in range(args.rounds):
            secs, ref_dets = baseline_loop(video, ref)
            base_fps.append(len(ref_dets) / secs)
            line = f"{label} round {r + 1}: baseline {len(ref_dets)} frames in {secs:.1f} s ({base_fps[-1]:.1f} fps)"
            for mode, flags in modes.items():
                res = maskjobs_run(video, args.workdir / f"out-{video.stem}-{mode}", weights, *flags)
                fps[mode].append(len(res.frames) / res.seconds)
                ratio[mode].append(fps[mode][-1] / base_fps[-1])
                ray_start.append(res.ray_start_s)
                agree[mode] = agreement(res.frames, ref_dets)
                same, alike, total = agree[mode]
                line += (f"; maskjobs run {' '.join(flags)}{' ' if flags else ''}{res.seconds:.1f} s "
                         f"({ratio[mode][-1]:.2f}x, Ray start {res.ray_start_s:.2f} s, equal {same}/{total}, "
                         f"same faces {alike}/{total})")
            print(line, flush=True)
        frames = len(ref_dets)
        dec = decode_alone(video, frames)
        ours, int8, theirs = detector_alone(video, frames, ref, weights, args.seconds)
        summary.append((label, frames, statistics.median(base_fps), dec, ours, int8, theirs,
                        {m: (statistics.median(fps[m]), statistics.median(ratio[m])) for m in modes},
                        statistics.median(ray_start), agree))
    print("\n| video | baseline loop | decode alone | detector alone: float32 / int8 / OpenCV DNN "
          "| maskjobs run | maskjobs run --int8 | Ray start | detections: equal (float32); same faces (int8) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for label, frames, base, dec, ours, int8, theirs, runs, ray, agree in summary:
        (f32, f32_x), (i8, i8_x) = runs["float32"], runs["int8"]
        print(f"| {label}, {frames} frames | {base:.1f} fps | {dec:.1f} fps | {ours:.1f} / {int8:.1f} / {theirs:.1f} fps "
              f"({ours / theirs:.2f}x / {int8 / theirs:.2f}x) | {f32:.1f} fps, **{f32_x:.2f}x** "
              f"| {i8:.1f} fps, **{i8_x:.2f}x** | {ray:.2f} s "
              f"| {agree['float32'][0]}/{frames}; {agree['int8'][1]}/{frames} |")


if __name__ == "__main__":
    main()
