"""Small faces: recall and precision by face width and label, whole frame against tiles, the
260 and 360 models, on generated footage with known boxes (:mod:`benchmarks.groundtruth`).

    python -m benchmarks.bench_tiling [--modes whole,3x3,4x4,360:whole,360:3x3] [--clips 4]
        [--frames 8] [--sizes 1080p,4k] [--write-table] [--device cpu|cuda]

For every clip every mode runs on the same decoded frames, one after the other, timed
(tile cutting, the model, post-processing and merging; not decoding), so frames/s are
comparable within the run only (the machine is shared). A true face counts as found when a
detection overlaps it at IoU >= ``--iou`` (0.3: tiny boxes are off by a pixel or two) with
the right label; a detection is a true positive when it is matched so, else a false positive
(a duplicate of a found face included). ``--write-table`` stores the 260 and 360 models'
recall by relative face width (face width / the width of the smallest picture the model saw
it in) as ``detector/reliability.json`` (:mod:`detector.reliability`).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, load_photos, machine, shared_dir
from benchmarks.groundtruth import make_scene, read_truth, write_clip
from detector.boxes import box_iou
from detector.detections import Detections
from detector.spec import CLASS_NAMES

logger = logging.getLogger(__name__)

RESOLUTIONS = {"1080p": (1920, 1080), "4k": (3840, 2160)}
WIDTHS = {"1080p": (16, 24, 32, 40, 48, 64, 96, 128), "4k": (16, 24, 32, 48, 64, 96, 128, 192, 256)}
GRID = {"1080p": (3, 4), "4k": (4, 6)}  # faces per frame: rows x cols of cells
FRACTION_BINS = (0.004, 0.006, 0.008, 0.010, 0.012, 0.014, 0.016, 0.018, 0.020, 0.025, 0.030, 0.040, 0.060, 0.100, 1.0)


@dataclass(frozen=True)
class Mode:
    name: str
    input_size: int
    tiles: str  # "off" or "RxC"


def parse_modes(text: str) -> list[Mode]:
    modes = []
    for item in text.split(","):
        size, _, tiles = item.strip().rpartition(":")
        modes.append(Mode(item.strip(), int(size) if size else 260, "off" if tiles == "whole" else tiles))
    return modes


@dataclass
class Tally:
    """Counts per (resolution, mode)."""

    found: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0]))  # (width, label) -> [found, total]
    by_fraction: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0]))  # (bin, label) -> [found, total]
    tp: int = 0
    fp: int = 0
    fp_small: int = 0  # false positives narrower than 64 px
    seconds: float = 0.0
    frames: int = 0


def score_frame(dets: Detections, truth: list[dict], *, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching by descending score. Returns ``found`` (G,) bool: each true face matched
    by a detection of its label; ``true_pos`` (K,) bool per detection."""
    gt = np.array([t["box"] for t in truth], np.float64).reshape(-1, 4)
    gt_label = np.array([CLASS_NAMES.index(t["label"]) for t in truth], np.int64)
    found = np.zeros(len(gt), bool)
    true_pos = np.zeros(len(dets), bool)
    if len(dets) == 0 or len(gt) == 0:
        return found, true_pos
    overlap = box_iou(dets.boxes, gt)
    taken = np.zeros(len(gt), bool)
    for k in np.argsort(-dets.scores, kind="stable"):
        cand = np.where(~taken & (overlap[k] >= iou))[0]
        if len(cand) == 0:
            continue
        g = cand[np.argmax(overlap[k, cand])]
        taken[g] = True
        if dets.labels[k] == gt_label[g]:
            found[g] = True
            true_pos[k] = True
    return found, true_pos


def _smallest_picture_width(width: int, height: int, mode: Mode) -> float:
    from detector.tiling import parse_tiles, tile_boxes

    grid = parse_tiles(mode.tiles)
    if grid is None:
        return float(width)
    t = tile_boxes(width, height, grid)
    return float((t[:, 2] - t[:, 0]).min())


def ensure_clips(workdir: Path, res: str, clips: int, frames: int) -> list[Path]:
    import imageio_ffmpeg

    media = shared_dir() / "media"
    photos = load_photos()
    if len(photos) < 2:
        raise SystemExit(f"needs both shared photos under {media}")
    by_label = {"Mask": photos[0], "NoMask": photos[1]}
    width, height = RESOLUTIONS[res]
    out = []
    for seed in range(clips):
        path = workdir / f"faces-{res}-{frames}-{seed}.mp4"
        if not path.exists() or not path.with_suffix(".json").exists():
            print(f"generating {path.name} ...", flush=True)
            scene = make_scene(by_label, width, height, frames, WIDTHS[res], seed=seed, grid=GRID[res])
            write_clip(path, scene, ffmpeg=imageio_ffmpeg.get_ffmpeg_exe())
        out.append(path)
    return out


def _read_frames(path: Path) -> np.ndarray:
    from jobs.video import open_video

    with open_video(path) as video:
        return video.batch(np.arange(len(video)))


def run(args: argparse.Namespace) -> dict:
    import torch

    from detector.predictor import FaceMaskDetector
    from detector.tiling import parse_tiles

    torch.set_num_threads(args.threads)
    weights = {260: shared_dir() / "models/aizoo/face_mask_detection.caffemodel",
               360: shared_dir() / "models/aizoo/model360.pth"}
    modes = parse_modes(args.modes)
    detectors = {}
    for m in modes:
        if m.input_size not in detectors:
            if not weights[m.input_size].exists():
                print(f"skipping the {m.input_size} model: {weights[m.input_size]} is missing")
                continue
            detectors[m.input_size] = FaceMaskDetector(weights[m.input_size], device=args.device)
    modes = [m for m in modes if m.input_size in detectors]
    tallies: dict[tuple[str, str], Tally] = defaultdict(Tally)
    for res, clips in _sizes(args.sizes, args.clips):
        for clip in ensure_clips(args.workdir, res, clips, args.frames):
            truth = read_truth(clip)
            frames = _read_frames(clip)
            print(f"measuring {clip.name} ...", flush=True)
            for m in modes:  # warm up: kernels are packed per input shape on first use
                detectors[m.input_size].detect(list(frames[:1]), tiles=parse_tiles(m.tiles))
            for start in range(0, len(frames), args.batch):
                batch = list(frames[start : start + args.batch])
                for m in modes:  # interleaved, so the shared machine's noise hits every mode alike
                    _measure(detectors[m.input_size], m, batch, truth, start, tallies[(res, m.name)], args.iou)
    _print(tallies, args, modes)
    return _curve(tallies)


def _measure(det, m: Mode, batch: list[np.ndarray], truth: dict, start: int, tally: Tally, iou: float) -> None:
    """Runs mode ``m`` on ``batch`` (frames ``start``.. of a clip) and scores it into ``tally``."""
    from detector.tiling import parse_tiles

    smallest = _smallest_picture_width(truth["width"], truth["height"], m)
    t0 = time.perf_counter()
    results = det.detect(batch, tiles=parse_tiles(m.tiles))
    tally.seconds += time.perf_counter() - t0
    tally.frames += len(batch)
    for i, dets in enumerate(results):
        faces = truth["frames"][start + i]
        found, true_pos = score_frame(dets, faces, iou=iou)
        tally.tp += int(true_pos.sum())
        false_pos = ~true_pos
        tally.fp += int(false_pos.sum())
        tally.fp_small += int((false_pos & (dets.boxes[:, 2] - dets.boxes[:, 0] < 64)).sum())
        for f, ok in zip(faces, found):
            cell = tally.found[(f["width"], f["label"])]
            cell[0] += int(ok)
            cell[1] += 1
            fb = int(np.searchsorted(FRACTION_BINS, f["width"] / smallest, side="right")) - 1
            cell = tally.by_fraction[(m.input_size, max(fb, 0), f["label"])]
            cell[0] += int(ok)
            cell[1] += 1


def _print(tallies: dict, args: argparse.Namespace, modes: list[Mode]) -> None:
    print(f"\nrecall (right label, IoU >= {args.iou}) by face width; precision; frames/s (relative to whole frame, same run)")
    for res, clips in _sizes(args.sizes, args.clips):
        widths = WIDTHS[res]
        base = tallies.get((res, modes[0].name))
        print(f"\n{res}, {clips} clips x {args.frames} frames, {GRID[res][0] * GRID[res][1]} faces per frame, device {args.device}")
        head = "| mode | label | " + " | ".join(f"{w}" for w in widths) + " px | precision | FP <64px | frames/s | x whole |"
        print(head)
        print("|" + " --- |" * (head.count("|") - 1))
        for m in modes:
            t = tallies[(res, m.name)]
            fps = t.frames / t.seconds if t.seconds else 0.0
            rel = (base.seconds / base.frames) / (t.seconds / t.frames) if base and t.seconds else 0.0
            prec = t.tp / (t.tp + t.fp) if t.tp + t.fp else float("nan")
            for j, label in enumerate(CLASS_NAMES):
                cells = []
                for w in widths:
                    f, n = t.found.get((w, label), (0, 0))
                    cells.append(f"{f / n:.2f}" if n else "")
                tail = f"{prec:.3f} | {t.fp_small} | {fps:.2f} | {rel:.2f}" if j == 0 else " | | |"
                print(f"| {m.name} | {label} | " + " | ".join(cells) + f" | {tail} |")
        counts = [tallies[(res, modes[0].name)].found.get((w, lab), (0, 0))[1] for w in widths for lab in CLASS_NAMES]
        print(f"true faces per (width, label) cell: {min(counts)} to {max(counts)}")


def _sizes(text: str, clips: int) -> list[tuple[str, int]]:
    """``"1080p:8,4k:2"`` -> ``[("1080p", 8), ("4k", 2)]``; a size without a count gets ``clips``."""
    out = []
    for item in text.split(","):
        res, _, n = item.strip().partition(":")
        out.append((res, int(n) if n else clips))
    return out


def _curve(tallies: dict) -> dict:
    """Recall per relative width bin and label, per input size, over every mode and resolution."""
    merged: dict = defaultdict(lambda: [0, 0])
    for t in tallies.values():
        for key, (f, n) in t.by_fraction.items():
            merged[key][0] += f
            merged[key][1] += n
    out: dict = {}
    for (size, b, label), (f, n) in sorted(merged.items()):
        entry = out.setdefault(str(size), {"fraction_from": [], "Mask": {}, "NoMask": {}})
        entry[label][str(FRACTION_BINS[b])] = [f, n]
    for entry in out.values():
        entry["fraction_from"] = sorted({float(k) for lab in CLASS_NAMES for k in entry[lab]})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default="whole,3x3,4x4,5x5,360:whole,360:3x3,360:4x4")
    p.add_argument("--sizes", default="1080p:8,4k:2", help="resolutions, each with its clip count (else --clips)")
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--batch", type=int, default=4, help="frames per detect call (their tiles go in one model call)")
    p.add_argument("--iou", type=float, default=0.3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "maskjobs-bench-tiling")
    p.add_argument("--write-table", action="store_true", help="store the curve as detector/reliability.json")
    args = p.parse_args()
    args.modes = ",".join("260:" + m if ":" not in m else m for m in args.modes.split(","))
    logging.basicConfig(level=logging.WARNING)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(machine())
    curve = run(args)
    if args.write_table:
        path = REPO / "detector" / "reliability.json"
        table = {"produced_by": "python -m benchmarks.bench_tiling " + _argv_summary(args), "iou": args.iou, "curves": curve}
        path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        print(f"wrote {path}")


def _argv_summary(args: argparse.Namespace) -> str:
    return f"--modes {args.modes} --sizes {args.sizes} --clips {args.clips} --frames {args.frames} --write-table"


if __name__ == "__main__":
    main()
