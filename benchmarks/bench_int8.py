"""int8 against float32: agreement by ``detector.int8_margin``, speed, calibration time.

    python -m benchmarks.bench_int8                      # the e2e videos (720p, 1080p) + 800 photo frames
    python -m benchmarks.bench_int8 --video mine.mp4     # your own videos instead of the generated ones

For each frame set the int8 detector is calibrated on 32 other frames (every 84th frame of a
video from frame 30, as a job's keyframes would be; 32 varied photo frames for the photo set),
both models run every frame, and for each margin the frames ``fragile_frames`` marks take
float32's outputs. "same faces" is :func:`detector.compare.same_faces` against float32 (same
count and labels, boxes at IoU >= 0.7). Then int8 frames/s at 1 and at 8 frames a model call
(2 worker threads, ``detect_prepared`` on batches of 16), and how long calibrating took.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import decoded_batches, load_photos
from benchmarks.int8 import varied_frames
from benchmarks.videos import add_video_arguments, ensure_video, start
from detector.compare import same_faces
from detector.postprocess import fragile_frames, postprocess
from detector.predictor import FaceMaskDetector
from jobs.pipeline.probe import probe_video

MARGINS = (0.0, 0.02, 0.03, 0.04, 0.05)


def _raw(det: FaceMaskDetector, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    outs = [det.raw(frames[i : i + 16]) for i in range(0, len(frames), 16)]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def agreement(weights: Path, frames: np.ndarray, calibration: np.ndarray) -> list[tuple[float, float, int]]:
    """``[(margin, share of frames re-run, frames with the same faces)]``."""
    fp32 = FaceMaskDetector(weights, num_threads=os.cpu_count() or 1)
    int8 = FaceMaskDetector(weights, num_threads=os.cpu_count() or 1)
    int8.quantize(calibration, margin=0.0)  # raw int8 outputs; the margins are applied below
    loc32, sc32 = _raw(fp32, frames)
    loc8, sc8 = _raw(int8, frames)
    sizes = [(1920, 1080)] * len(frames)
    want = postprocess(loc32, sc32, fp32.anchors, sizes)
    got8 = postprocess(loc8, sc8, fp32.anchors, sizes)
    rows = []
    for margin in MARGINS:
        fragile = (
            torch.cat([fragile_frames(loc8[i : i + 16], sc8[i : i + 16], fp32.anchors, margin=margin)
                       for i in range(0, len(frames), 16)])
            if margin else torch.zeros(len(frames), dtype=torch.bool)
        )
        got = [w if f else g for w, g, f in zip(want, got8, fragile.tolist())]
        rows.append((margin, float(fragile.float().mean()), sum(same_faces(w, g) for w, g in zip(want, got))))
    return rows


def speed(weights: Path, frames: np.ndarray, calibration: np.ndarray, seconds: float) -> dict[str, float]:
    """int8 frames/s at 1 and 8 frames a model call, and the calibration's seconds."""
    out = {}
    det = FaceMaskDetector(weights, num_threads=os.cpu_count() or 1)
    start = time.perf_counter()
    det.quantize(calibration, margin=0.0)
    out["calibrate_s"] = time.perf_counter() - start
    saved = det.engine.micro_batch  # frames per int8 call (detector.runners.int8.INT8_MICRO_BATCH)
    try:
        for per_call in (1, saved):
            det.engine.micro_batch = per_call
            det.raw(frames[:16])
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                for i in range(0, len(frames), 16):
                    det.detect_prepared(frames[i : i + 16], [(1, 1)] * len(frames[i : i + 16]))
                n += len(frames)
            out[f"{per_call} a call"] = n / (time.perf_counter() - t0)
    finally:
        det.engine.micro_batch = saved
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_video_arguments(p)
    p.add_argument("--seconds", type=float, default=4.0, help="per speed measurement")
    args = p.parse_args(argv)
    weights = start(args)
    videos = args.video or [ensure_video(args.workdir, size, args.frames) for size in ("720p", "1080p")]
    sets = {}
    for video in videos:
        n = probe_video(str(video)).frames_total
        frames = np.concatenate([b["frames"] for b in decoded_batches(video, n, 16)])
        calibration = np.stack([frames[i] for i in range(30, len(frames), 84)][:32])
        sets[video.name] = (frames, calibration)
    photos = load_photos()
    if photos:
        sets["800 varied photo frames"] = (
            np.concatenate([varied_frames(photos, 400, 260, seed=7), varied_frames(photos, 400, 260, seed=99)]),
            varied_frames(photos, 32, 260, seed=100),
        )
    print("\n| frames | " + " | ".join(f"margin {m:g}: re-run, same faces" for m in MARGINS) + " |")
    print("| --- |" + " --- |" * len(MARGINS))
    for name, (frames, calibration) in sets.items():
        rows = agreement(weights, frames, calibration)
        cells = [f"{share:.1%}, {same}/{len(frames)} ({same / len(frames):.2%})" for _, share, same in rows]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    frames, calibration = next(iter(sets.values()))
    s = speed(weights, frames[:256], calibration, args.seconds)
    print(f"\nint8 on {os.cpu_count()} worker threads, batches of 16: "
          + ", ".join(f"{k} {v:.0f} frames/s" for k, v in s.items() if k != "calibrate_s")
          + f"; calibrating on {len(calibration)} frames took {s['calibrate_s']:.2f} s")


if __name__ == "__main__":
    main()
