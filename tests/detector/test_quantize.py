"""The int8 detector (``detector.quantize``): agreement with float32, determinism, guards."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.videogen import Scene
from detector.compare import same_faces
from detector.predictor import FaceMaskDetector
from detector.preprocess import resize_rgb
from detector.quantize import int8_available
from tests.conftest import read_rgb

pytestmark = [
    pytest.mark.skipif(not int8_available(), reason="this torch build has no x86 quantized engine"),
    pytest.mark.slow,  # calibrates int8 models and runs them over hundreds of frames
]


@pytest.fixture(scope="module")
def scene(masked_photo: Path, unmasked_photo: Path) -> Scene:
    return Scene((read_rgb(unmasked_photo), read_rgb(masked_photo)), width=640, height=360)


def _frames(scene: Scene, indices: range, *, dim: float = 1.0, flip: bool = False) -> np.ndarray:
    out = []
    for i in indices:
        img = scene.frame(i)
        if flip:
            img = img[:, ::-1]
        out.append(resize_rgb(np.clip(img * dim, 0, 255).astype(np.uint8), 260))
    return np.stack(out)


@pytest.fixture(scope="module")
def detectors(caffe_weights: Path, scene: Scene) -> tuple[FaceMaskDetector, FaceMaskDetector]:
    fp32 = FaceMaskDetector(caffe_weights, num_threads=2)
    int8 = FaceMaskDetector(caffe_weights, num_threads=2)
    int8.quantize(_frames(scene, range(0, 640, 20)))  # 32 frames, none of the ones checked
    return fp32, int8


def test_int8_finds_the_same_faces_on_99_percent_of_frames(detectors, scene: Scene) -> None:
    fp32, int8 = detectors
    frames = np.concatenate([
        _frames(scene, range(1001, 1201, 2)),
        _frames(scene, range(2001, 2101, 2), dim=0.6),
        _frames(scene, range(3001, 3101, 2), flip=True),
    ])
    sizes = [(640, 360)] * 16
    want, got = [], []
    for i in range(0, len(frames), 16):
        chunk = frames[i : i + 16]
        want += fp32.detect_prepared(chunk, sizes[: len(chunk)])
        got += int8.detect_prepared(chunk, sizes[: len(chunk)])
    assert sum(len(d) for d in want) > len(frames)  # faces to agree on: two per frame, mostly
    alike = sum(same_faces(w, g) for w, g in zip(want, got))
    assert alike >= 0.99 * len(frames), f"same faces on {alike}/{len(frames)} frames"
    assert int8.backend == "int8" and fp32.backend != "int8"


def test_quantize_is_deterministic(caffe_weights: Path, scene: Scene) -> None:
    calibration = _frames(scene, range(5, 400, 25))
    check = _frames(scene, range(7, 120, 7))
    outs = []
    for _ in range(2):
        det = FaceMaskDetector(caffe_weights, num_threads=1)
        det.quantize(calibration)
        outs.append(det.raw(check))
    for a, b in zip(*outs):
        assert np.array_equal(a.numpy(), b.numpy())


def test_bad_calibration_and_copies_are_refused(detectors, caffe_weights: Path) -> None:
    det = FaceMaskDetector(caffe_weights)
    with pytest.raises(ValueError, match=r"\(N>0, 260, 260, 3\)"):
        det.quantize(np.zeros((4, 128, 128, 3), np.uint8))
    with pytest.raises(ValueError, match="N>0"):
        det.quantize(np.zeros((0, 260, 260, 3), np.uint8))
    with pytest.raises(ValueError, match="float32"):
        det.quantize(np.zeros((4, 260, 260, 3), np.float32))
    assert det.backend != "int8"
    with pytest.raises(TypeError, match="int8"):
        pickle.dumps(detectors[1])


def test_fragile_frames_are_run_again_in_float32(caffe_weights: Path, scene: Scene, detectors) -> None:
    """With a margin, a frame's outputs are either int8's or exactly float32's; the counters
    say how many of each; margin 0 keeps every int8 output."""
    fp32, _ = detectors
    frames = _frames(scene, range(11, 400, 13))
    trusting = FaceMaskDetector(caffe_weights, num_threads=2)
    refined = FaceMaskDetector(caffe_weights, num_threads=2)
    calibration = _frames(scene, range(0, 640, 20))
    trusting.quantize(calibration, margin=0.0)
    refined.quantize(calibration, margin=0.2)  # wide: some frames are fragile
    want, pure, got = fp32.raw(frames), trusting.raw(frames), refined.raw(frames)
    assert trusting.float32_frames == 0 and trusting.int8_frames == len(frames)
    assert refined.int8_frames + refined.float32_frames == len(frames) and refined.float32_frames > 0
    as_float = [bool(torch.equal(got[1][i], want[1][i])) for i in range(len(frames))]
    as_int8 = [bool(torch.equal(got[1][i], pure[1][i])) for i in range(len(frames))]
    assert sum(as_float) == refined.float32_frames
    assert all(f or i for f, i in zip(as_float, as_int8))
    with pytest.raises(ValueError, match="margin"):
        FaceMaskDetector(caffe_weights).quantize(calibration, margin=-1)
