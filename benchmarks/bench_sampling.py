"""Long footage, sampled: ``maskjobs run`` against the seed's loop, side by side in one run,
with the core-time bound printed beside each ratio.

    python -m benchmarks.bench_sampling                       # 7.5 min of 720p + 1080p walkers, 4 cases
    python -m benchmarks.bench_sampling --minutes 1 --cases every stride --rounds 2
    python -m benchmarks.bench_sampling --help

The footage is :func:`benchmarks.videos.ensure_walkers_video`'s (real faces from the shared photos
walking across the picture; x264 ``fast``, High profile, CRF 26, 30 fps, a keyframe every 300
frames, as CCTV writes it): ``--minutes`` of it in all, split evenly over ``--sizes``, plus a
``--clip-seconds`` 1080p clip. Generated once into ``--workdir``. The cases:

- **every**: every frame of the long footage. The loop: ``cv2.VideoCapture.read()`` each frame,
  RGB, ``cv2.dnn.blobFromImage`` to 260x260 /255, OpenCV DNN on the Caffe model, our
  post-processing. maskjobs: ``maskjobs run A B --out DIR``.
- **stride**: every ``--stride``-th frame (15: 2 per second). The loop, as a
  careful user writes it: ``grab()`` every frame, ``retrieve()`` and detect the kept ones.
  maskjobs: ``--stride N``.
- **keyframes**: the keyframes the container lists. The same grab() loop, retrieving at those
  frames. maskjobs: ``--keyframes``.
- **clip**: the 1080p clip, every frame (the fixed cost of a short job).

Each row gives the loop's and maskjobs' wall times (maskjobs from process start to exit,
embedded Ray, every other default), their ratio, and the **core-time bound**: the CPU this
machine must spend at the least with our decoder and detector, measured alone on one thread
each (decode-only cost of every frame that must be decoded, without RGB conversion; RGB +
resize of the kept ones, or a seek and one decode per keyframe; the detector on the kept
frames), divided by the cores: no job on these components can finish faster. The sampled case
reads through :mod:`jobs.sparse` (PyAV skipping non-reference frames, which decord cannot), so
its decode part is that path's own cost, measured the same way: every ``--stride``-th of the
first frames read by it alone, on one thread, RGB and resize of the kept ones included, per
frame spanned (printed as ``sampled``). ``bound x`` is
the loop's time over that bound (the best ratio reachable), ``of bound`` how much of it the run
reached. The bound counts no fixed cost, so the run is split in two: the **run phase**
(``run_s`` in job.json: decoding and detecting, from the first shard to the last; beside it
the bound as a share of it) and the **fixed** rest (Python and imports, Ray's start, the
probes, tracks and thumbnails, the output's commit, Ray's shutdown). Detections of every kept frame are compared with the loop's: **equal** (same faces and
labels, boxes within 1 px, scores within 1e-3).

The machine may be shared: compare within one run only; the loop and maskjobs alternate per
round and the table gives medians.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from benchmarks.common import caffe_pair, machine
from benchmarks.videos import SIZES, ensure_walkers_video, start
from detector.compare import equal
from detector.detections import Detections
from detector.postprocess import postprocess
from detector.predictor import FaceMaskDetector
from detector.preprocess import resize_rgb

WALKERS_FPS, WALKERS_GOP = 30, 300  # stride 15 is 2 frames a second; a keyframe every 10 s
CASES = ("stride", "keyframes", "clip", "every")  # the longest last


class Reference:
    """OpenCV DNN on the published Caffe pair plus our post-processing: the seed's CPU path."""

    def __init__(self, weights: Path) -> None:
        prototxt, caffemodel = caffe_pair(weights)
        self.net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
        spec_source = FaceMaskDetector(weights)
        self.spec, self.anchors = spec_source.spec, spec_source.anchors
        self.score_threshold, self.iou_threshold = spec_source.score_threshold, spec_source.iou_threshold

    def detect(self, rgb: np.ndarray) -> Detections:
        s = self.spec.input_size
        blob = cv2.dnn.blobFromImage(rgb, scalefactor=1 / 255.0, size=(s, s))
        self.net.setInput(blob)
        loc, cls = self.net.forward(["loc_branch_concat", "cls_branch_concat"])
        a, c = self.spec.num_anchors, self.spec.num_classes
        return postprocess(
            torch.from_numpy(loc).reshape(1, a, 4), torch.from_numpy(cls).reshape(1, a, c), self.anchors,
            [(rgb.shape[1], rgb.shape[0])], score_threshold=self.score_threshold, iou_threshold=self.iou_threshold,
            variances=self.spec.variances, class_names=self.spec.class_names,
        )[0]


def seed_loop(paths: list[Path], ref: Reference, keep: dict[str, set[int]] | None) -> tuple[float, dict[str, dict[int, Detections]]]:
    """The seed's loop over ``paths`` one after the other: every frame read and detected
    (``keep`` None), or every frame grabbed and the ``keep[name]`` ones retrieved and detected.
    Returns (seconds, {video name: {frame: detections}})."""
    out: dict[str, dict[int, Detections]] = {}
    t0 = time.perf_counter()
    for path in paths:
        dets: dict[int, Detections] = {}
        cap = cv2.VideoCapture(str(path))
        wanted = None if keep is None else keep[path.name]
        i = 0
        while True:
            if wanted is None:
                ok, bgr = cap.read()
            else:
                ok = cap.grab()
                bgr = None
                if ok and i in wanted:
                    ok, bgr = cap.retrieve()
            if not ok:
                break
            if bgr is not None:
                dets[i] = ref.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            i += 1
        cap.release()
        out[path.name] = dets
    return time.perf_counter() - t0, out


@dataclass
class Run:
    seconds: float
    timings: dict[str, float]
    sizing: dict
    frames: pd.DataFrame
    videos: pd.DataFrame


def maskjobs_run(paths: list[Path], out: Path, weights: Path, flags: list[str]) -> Run:
    """``maskjobs run PATHS --out OUT FLAGS`` as a user runs it, timed from start to exit."""
    exe = shutil.which("maskjobs", path=str(Path(sys.executable).parent)) or "maskjobs"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "MASKJOBS_WEIGHTS": str(weights)}
    t0 = time.perf_counter()
    proc = subprocess.run([exe, "run", *map(str, paths), "--out", str(out), *flags], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"maskjobs run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    job = json.loads((out / "job.json").read_text())
    return Run(seconds, job.get("timings", {}), job.get("sizing", {}), pd.read_parquet(out / "frames"),
               pd.read_parquet(out / "videos.parquet"))


def agreement(frames: pd.DataFrame, ref: dict[str, dict[int, Detections]]) -> tuple[int, int]:
    """(kept frames whose detections equal the loop's, kept frames the loop has); a frame
    maskjobs lacks or has beyond the loop's counts as unequal."""
    same = 0
    names = next(iter(next(iter(ref.values())).values())).class_names if any(ref.values()) else ("Mask", "NoMask")
    wanted = sum(len(v) for v in ref.values())
    for row in frames.itertuples():
        want = ref.get(row.video, {}).get(row.frame)
        if want is None:
            continue
        got = Detections(
            np.array([[d["x1"], d["y1"], d["x2"], d["y2"]] for d in row.detections], np.float32).reshape(-1, 4),
            np.array([d["score"] for d in row.detections], np.float32),
            np.array([list(names).index(d["label"]) for d in row.detections], np.int64),
            names,
        )
        same += equal(want, got)
    return same, wanted


@dataclass(frozen=True)
class Costs:
    """Core-seconds per frame of one video, one thread each, measured alone."""

    skip: float  # decode without RGB conversion (decord ``skip_frames`` and the next read)
    keep: float  # decode + RGB + resize to the model's input
    keyframe: float  # seek to a keyframe, decode it, RGB + resize
    detect: float  # the detector (float32, batches of 16)
    sampled: float  # every stride-th frame read by jobs.sparse (skipping), RGB + resize, per frame spanned


def _cpu(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def measure_costs(path: Path, detector: FaceMaskDetector, *, sample: int = 750, stride: int = 15) -> Costs:
    """:class:`Costs` of ``path`` on its first ``sample`` frames (and first 8 keyframes)."""
    import decord

    from jobs.sparse import read_sampled
    from jobs.video import open_video

    n = min(sample, len(decord.VideoReader(str(path), num_threads=1)))
    # first, while no other decord reader is open (their read-ahead threads would be timed too)
    spanned = len(range(0, n, stride)) * stride - stride + 1
    with open_video(path, threads=1) as video:  # opened (decord indexes the file) outside the timing
        video.keyframes()
        sampled_cost = _cpu(lambda: [resize_rgb(image, 260) for image in read_sampled(video, np.arange(0, n, stride))])
    sampled_cost /= spanned
    reader = decord.VideoReader(str(path), num_threads=1)
    frames: list[np.ndarray] = []
    keep = _cpu(lambda: frames.extend(resize_rgb(reader.next().asnumpy(), 260) for _ in range(n))) / n
    # decord's skip_frames returns at once and the next read decodes the skipped frames: time
    # every 30th frame read, and take the kept ones' cost off
    reader = decord.VideoReader(str(path), num_threads=1)

    def every_30th() -> None:
        for i in range(0, n, 30):
            if i:
                reader.skip_frames(29)
            resize_rgb(reader.next().asnumpy(), 260)

    kept = len(range(0, n, 30))
    skip = max(0.0, _cpu(every_30th) - kept * keep) / max(1, n - kept)
    # decord's readers decode ahead on their own threads, which this process's CPU time counts:
    # with one still open the detector measured ~2x its cost (25 ms a frame, not 13)
    del reader
    gc.collect()
    time.sleep(0.5)
    # keyframes as --keyframes reads them (jobs.sparse: a seek and the keyframe's packet each)
    with open_video(path, threads=1) as video:
        keys = np.asarray(video.keyframes())[:8]
        keyframe = _cpu(lambda: [resize_rgb(image, 260) for image in read_sampled(video, keys)]) / max(1, len(keys))
    gc.collect()
    time.sleep(0.5)
    batch = np.stack(frames[:64])
    detector.detect_prepared(batch[:16], [(1, 1)] * 16)  # warm
    detect = _cpu(lambda: [detector.detect_prepared(batch[i : i + 16], [(1, 1)] * 16) for i in range(0, 64, 16)]) / 64
    return Costs(skip, keep, keyframe, detect, sampled_cost)


def bound_s(case: str, totals: dict[str, int], kept: dict[str, int], costs: dict[str, Costs], cores: int) -> float:
    """The core-time bound of ``case`` in wall seconds on ``cores`` cores."""
    core_s = 0.0
    for name, total in totals.items():
        c, k = costs[name], kept[name]
        if case == "keyframes":
            core_s += k * (c.keyframe + c.detect)
        elif case == "stride":
            core_s += total * c.sampled + k * c.detect
        else:
            core_s += (total - k) * c.skip + k * (c.keep + c.detect)
    return core_s / cores


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=7.5, help="minutes of long footage in all, split over --sizes")
    p.add_argument("--sizes", nargs="+", default=["720p", "1080p"], choices=sorted(SIZES))
    p.add_argument("--stride", type=int, default=15, help="the sampled case's stride (15: 2 frames a second)")
    p.add_argument("--clip-seconds", type=float, default=30.0)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--rounds", type=int, default=1, help="the loop and maskjobs alternated this many times per case")
    p.add_argument("--flags", default="", help="extra flags for every maskjobs run (e.g. '--batch-size 8')")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=Path("/tmp") / "maskjobs-bench")
    args = p.parse_args(argv)
    weights = start(args)
    cores = len(os.sched_getaffinity(0))
    cv2.setNumThreads(cores)
    ref = Reference(weights)
    per = round(args.minutes * 60 * WALKERS_FPS / len(args.sizes))
    long_paths = [ensure_walkers_video(args.workdir, size, per, fps=WALKERS_FPS, gop=WALKERS_GOP) for size in args.sizes]
    clip = ensure_walkers_video(args.workdir, "1080p", round(args.clip_seconds * WALKERS_FPS), fps=WALKERS_FPS, gop=WALKERS_GOP)

    import decord

    def facts(path: Path) -> tuple[int, list[int]]:
        reader = decord.VideoReader(str(path), num_threads=1)
        return len(reader), [int(k) for k in reader.get_key_indices()]

    info = {p.name: facts(p) for p in [*long_paths, clip]}
    torch.set_num_threads(1)
    detector = FaceMaskDetector(weights, num_threads=1)
    costs = {p.name: measure_costs(p, detector, stride=args.stride) for p in [*long_paths, clip]}
    torch.set_num_threads(cores)
    for name, c in costs.items():
        print(f"costs alone, one thread, {name}: decode-only {c.skip * 1e3:.2f} ms, decode+RGB+resize "
              f"{c.keep * 1e3:.2f} ms, keyframe seek+decode {c.keyframe * 1e3:.2f} ms, detector {c.detect * 1e3:.2f} ms a frame; "
              f"sampled every {args.stride}th, skipping (jobs.sparse) {c.sampled * 1e3:.2f} ms a frame spanned "
              f"(decord: {((args.stride - 1) * c.skip + c.keep) / args.stride * 1e3:.2f} ms)")

    rows = []
    extra = args.flags.split()
    for case in args.cases:
        paths = [clip] if case == "clip" else long_paths
        totals = {p.name: info[p.name][0] for p in paths}
        if case == "stride":
            keep = {p.name: set(range(0, totals[p.name], args.stride)) for p in paths}
            flags = ["--stride", str(args.stride)]
        elif case == "keyframes":
            keep = {p.name: set(info[p.name][1]) for p in paths}
            flags = ["--keyframes"]
        else:
            keep, flags = None, []
        kept = {n: (len(keep[n]) if keep else totals[n]) for n in totals}
        loop_s, ours_s, ratios, run_phase = [], [], [], []
        for r in range(args.rounds):
            secs, dets = seed_loop(paths, ref, keep)
            run = maskjobs_run(paths, args.workdir / f"out-sampling-{case}", weights, flags + extra)
            loop_s.append(secs)
            ours_s.append(run.seconds)
            ratios.append(secs / run.seconds)
            run_phase.append(run.timings.get("run_s", run.seconds))
            same, wanted = agreement(run.frames, dets)
            t = run.timings
            print(f"{case} round {r + 1}: loop {secs:.1f} s, maskjobs run {run.seconds:.1f} s ({ratios[-1]:.2f}x); "
                  f"rows {len(run.frames)}, equal {same}/{wanted}; sizing {run.sizing}; timings "
                  + ", ".join(f"{k} {v:.2f}" for k, v in t.items())
                  + (f"; sampling rate {run.videos['sampling_rate'].round(3).tolist()}" if "sampling_rate" in run.videos else ""),
                  flush=True)
        bound = bound_s(case, totals, kept, costs, cores)
        loop_med, ours_med, ratio = statistics.median(loop_s), statistics.median(ours_s), statistics.median(ratios)
        phase = statistics.median(run_phase)
        rows.append((case, sum(kept.values()), sum(totals.values()), loop_med, ours_med, ratio, bound,
                     loop_med / bound, same, wanted, phase))

    print(f"\n{machine()}; {args.rounds} round(s); {cores} cores for the bound")
    print("\n| case | frames kept / in the videos | seed loop | maskjobs run | ratio | core-time bound | bound x loop "
          "| of bound | run phase (of bound) | fixed | equal |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for case, k, total, loop_med, ours_med, ratio, bound, best, same, wanted, phase in rows:
        print(f"| {case} | {k} / {total} | {loop_med:.1f} s | {ours_med:.1f} s | **{ratio:.2f}x** | {bound:.1f} s "
              f"| {best:.2f}x | {ratio / best:.0%} | {phase:.1f} s ({bound / phase:.0%}) | {ours_med - phase:.1f} s "
              f"| {same}/{wanted} |")


if __name__ == "__main__":
    main()
