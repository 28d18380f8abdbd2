"""The CUDA path: fp16 and fp32 against the CPU's fp32, batch sizes, pinned uploads, and
``maskjobs run`` with a GPU detector actor beside CPU decode workers.

    python -m benchmarks.bench_gpu --weights W.pth --video CLIP.mp4 [--copies 12] [--out DIR]

Sections (each reports and goes on if another fails):

1. agreement: every frame of ``--video`` (decoded by decord, resized as the job does) through
   ``FaceMaskDetector`` on CPU fp32 (the reference path, equal to OpenCV DNN within 1e-4 in the
   tests), CUDA fp32 and CUDA fp16: largest raw differences, and the share of frames whose
   detections are the same (count, labels, boxes within 1 px, scores within 1e-3);
2. throughput: ``detect_prepared`` from uint8 host frames (upload, model, post-processing,
   detections back on the host) per batch size, fp16 and fp32, through the pinned staging buffer
   and, for comparison, a plain pageable upload; and ``suggested_batch_size``;
3. pruning: the pruned fp32 model (``detector.prune``, the default) against the full one, raw
   outputs and frames/s at batch 256 and 512;
4. end to end: ``maskjobs run`` over ``--copies`` copies of ``--video``, with one detector actor
   on the GPU (``resources.detector_gpus: 1``), then the same on CPUs only, wall clock each;
   the GPU run's detections are compared with the CPU run's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import decoded_batches
from detector.detections import Detections
from detector.predictor import FaceMaskDetector


def _frames(video: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Every frame of ``video`` resized as the job does, and the video's (width, height). A
    ``.npz`` holding ``frames`` and ``size`` (see :func:`save_frames`) is read as is, for a
    machine without decord."""
    if video.suffix == ".npz":
        with np.load(video) as data:
            return data["frames"], (int(data["size"][0]), int(data["size"][1]))
    from jobs.video import open_video

    with open_video(video) as opened:
        n = len(opened)
    batches = list(decoded_batches(video, n, 64))
    return np.concatenate([b["frames"] for b in batches]), (int(batches[0]["width"][0]), int(batches[0]["height"][0]))


def save_frames(video: Path, out: Path, *, every: int = 1) -> Path:
    """Writes every ``every``-th prepared frame of ``video`` to ``out`` (``.npz``) for ``--video``."""
    frames, size = _frames(video)
    np.savez_compressed(out, frames=frames[::every], size=np.array(size))
    return out


def _cuda_fps(call: Callable[[], object], frames_per_call: int, seconds: float, *, warmup: int) -> float:
    """Frames/s of ``call`` repeated for ``seconds`` after ``warmup`` calls, the GPU's queue
    drained before the clock starts and before it stops."""
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        call()
        n += frames_per_call
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def _same(a: Detections, b: Detections) -> bool:
    if len(a) != len(b):
        return False
    oa, ob = np.lexsort((a.boxes[:, 0], -a.scores)), np.lexsort((b.boxes[:, 0], -b.scores))
    return (
        np.array_equal(a.labels[oa], b.labels[ob])
        and np.allclose(a.boxes[oa], b.boxes[ob], atol=1.0)
        and np.allclose(a.scores[oa], b.scores[ob], atol=1e-3)
    )


def agreement(weights: Path, frames: np.ndarray, size: tuple[int, int]) -> dict[str, Any]:
    cpu = FaceMaskDetector(weights, num_threads=min(8, os.cpu_count() or 1))
    sizes = [size] * len(frames)
    ref_raw = [cpu.raw(frames[i : i + 64]) for i in range(0, len(frames), 64)]
    ref = cpu.detect_prepared(frames, sizes)
    out: dict[str, Any] = {"frames": len(frames), "faces_cpu_fp32": int(sum(len(d) for d in ref))}
    for name, half in (("cuda_fp32", False), ("cuda_fp16", True)):
        det = FaceMaskDetector(weights, device="cuda", half=half)
        loc_d = score_d = 0.0
        for k, i in enumerate(range(0, len(frames), 64)):
            loc, sc = det.raw(frames[i : i + 64])
            loc_d = max(loc_d, float((loc.cpu() - ref_raw[k][0]).abs().max()))
            score_d = max(score_d, float((sc.cpu() - ref_raw[k][1]).abs().max()))
        got = det.detect_prepared(frames, sizes)
        same = sum(_same(a, b) for a, b in zip(ref, got))
        out[name] = {"max_abs_loc": loc_d, "max_abs_scores": score_d, "frames_same": same,
                     "share_same": same / len(frames)}
        print(f"{name}: max |loc - cpu| {loc_d:.2e}, max |scores - cpu| {score_d:.2e}; detections equal on "
              f"{same}/{len(frames)} frames ({100 * same / len(frames):.2f} %)", flush=True)
    return out


def throughput(weights: Path, frames: np.ndarray, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for half in (True, False):
        det = FaceMaskDetector(weights, device="cuda", half=half)
        name = "fp16" if half else "fp32"
        out[f"suggested_batch_{name}"] = det.suggested_batch_size()
        for b in (16, 64, 256, 512):
            batch = np.ascontiguousarray(np.resize(frames, (b, *frames.shape[1:])))
            sizes = [(1920, 1080)] * b
            for upload in ("pinned", "pageable"):
                if upload == "pageable":
                    det.engine._upload = lambda f: f.to(det.device)  # type: ignore[method-assign]
                else:
                    det.engine.__dict__.pop("_upload", None)
                fps = _cuda_fps(lambda: det.detect_prepared(batch, sizes), b, seconds, warmup=3)
                out[f"{name}_b{b}_{upload}"] = fps
                print(f"{name} batch {b} {upload}: {fps:,.0f} frames/s (upload + model + post-processing)", flush=True)
            det.engine.__dict__.pop("_upload", None)
        print(f"suggested batch size ({name}): {out[f'suggested_batch_{name}']}", flush=True)
    return out


def pruning(weights: Path, frames: np.ndarray, seconds: float) -> dict[str, Any]:
    """The pruned model (the fp32 default) against the full one on the GPU: largest raw
    differences, and frames/s of ``raw`` at batch 256 and 512, alternated. (fp16 runs the full
    model: pruned, it ran 0.82x on an H200, see ``benchmarks/README.md``.)"""
    out: dict[str, Any] = {}
    dets = {p: FaceMaskDetector(weights, device="cuda", prune=p) for p in (True, False)}
    a, b = dets[True].raw(frames[:256]), dets[False].raw(frames[:256])
    out["max_abs_loc"] = float((a[0] - b[0]).abs().max())
    out["max_abs_scores"] = float((a[1] - b[1]).abs().max())
    print(f"fp32: pruned vs full, max |loc| {out['max_abs_loc']:.2e}, max |scores| {out['max_abs_scores']:.2e}", flush=True)
    for size in (256, 512):
        batch = np.ascontiguousarray(np.resize(frames, (size, *frames.shape[1:])))
        fps: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(3):
            for pruned, det in dets.items():
                fps[pruned].append(_cuda_fps(lambda: det.raw(batch), size, seconds / 3, warmup=2))
        for pruned in (True, False):
            out[f"b{size}_{'pruned' if pruned else 'full'}"] = float(np.median(fps[pruned]))
        print(f"fp32 batch {size}: pruned {np.median(fps[True]):,.0f} frames/s, full {np.median(fps[False]):,.0f} "
              f"(median of 3 alternated runs)", flush=True)
    return out


def end_to_end(weights: Path, video: Path, copies: int, work: Path) -> dict[str, Any]:
    import pandas as pd

    inputs = work / "videos"
    inputs.mkdir(parents=True, exist_ok=True)
    for k in range(copies):
        dst = inputs / f"cam{k:02d}{video.suffix}"
        if not dst.exists():
            shutil.copy(video, dst)
    out: dict[str, Any] = {}
    configs = {
        "gpu": "resources:\n  detector_gpus: 1\nray:\n  object_store_mb: 8192\n",
        "cpu": "ray:\n  object_store_mb: 8192\n",
    }
    frames = {}
    for name, text in configs.items():
        cfg = work / f"{name}.yaml"
        cfg.write_text(text)
        dest = work / f"out-{name}"
        shutil.rmtree(dest, ignore_errors=True)
        cmd = [sys.executable, "-c", "from jobs.cli.main import app; app()", "run", str(inputs), "--out", str(dest),
               "--weights", str(weights), "--config", str(cfg)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        secs = time.perf_counter() - t0
        if proc.returncode != 0:
            print(f"{name}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", flush=True)
            continue
        job = json.loads((dest / "job.json").read_text())
        df = pd.read_parquet(dest / "frames")
        frames[name] = df
        out[name] = {"seconds": secs, "frames": len(df), "fps": len(df) / secs, "timings": job.get("timings"),
                     "sizing": job.get("sizing")}
        print(f"maskjobs run ({name}): {len(df)} frames in {secs:.1f} s = {len(df) / secs:,.0f} frames/s; "
              f"timings {job.get('timings')}; sizing {job.get('sizing')}", flush=True)
    if len(frames) == 2:
        key = ["video", "frame"]
        a = frames["gpu"].sort_values(key).reset_index(drop=True)
        b = frames["cpu"].sort_values(key).reset_index(drop=True)
        same = int((a["faces"].values == b["faces"].values).sum()) if len(a) == len(b) else -1
        labels = int(sum(sorted(d["label"] for d in x) == sorted(d["label"] for d in y)
                         for x, y in zip(a["detections"], b["detections"])))
        out["same_face_count"] = same
        out["same_labels"] = labels
        print(f"GPU fp16 run vs CPU run: same face count on {same}/{len(a)} frames, same labels on {labels}/{len(a)}",
              flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--video", type=Path, required=True,
                   help="a video, or a .npz of prepared frames written by --save-frames (no decord needed)")
    p.add_argument("--save-frames", type=Path, help="write every --every-th prepared frame of --video here and stop")
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--copies", type=int, default=12)
    p.add_argument("--seconds", type=float, default=1.5)
    p.add_argument("--out", type=Path, default=Path("gpu-bench"))
    p.add_argument("--sections", nargs="+", default=["agreement", "throughput", "pruning", "e2e"])
    args = p.parse_args(argv)
    if args.save_frames:
        print(save_frames(args.video, args.save_frames, every=args.every))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs", flush=True)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    frames, size = _frames(args.video)
    print(f"{len(frames)} frames of {args.video.name} ({size[0]}x{size[1]})", flush=True)
    for section in args.sections:
        try:
            if section == "agreement":
                results[section] = agreement(args.weights, frames, size)
            elif section == "throughput":
                results[section] = throughput(args.weights, frames, args.seconds)
            elif section == "pruning":
                results[section] = pruning(args.weights, frames, args.seconds)
            elif section == "e2e":
                results[section] = end_to_end(args.weights, args.video, args.copies, args.out / "e2e")
        except Exception:  # report and go on: one section's failure must not waste the run
            traceback.print_exc()
        (args.out / "gpu.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
