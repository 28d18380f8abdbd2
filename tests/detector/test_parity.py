"""The port equals the reference runtime (OpenCV DNN on the published Caffe model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detector.model import flatten_head
from detector.predictor import FaceMaskDetector
from tests.conftest import MEDIA, read_rgb

TOLERANCE = 1e-4


def _parity_inputs() -> list[tuple[str, np.ndarray]]:
    """24 inputs: the photos, crops, resizes, flips, a collage and random pictures."""
    photos = {p.stem: read_rgb(p) for p in (MEDIA / "aizoo_demo2.jpg", MEDIA / "skimage_astronaut.png")}
    rng = np.random.default_rng(1234)
    out: list[tuple[str, np.ndarray]] = []
    for name, img in photos.items():
        h, w = img.shape[:2]
        out += [
            (name, img),
            (f"{name}-crop-center", img[h // 8 : h - h // 8, w // 8 : w - w // 8]),
            (f"{name}-crop-topleft", img[: h * 2 // 3, : w * 2 // 3]),
            (f"{name}-small", np.ascontiguousarray(img[::2, ::2])),
            (f"{name}-wide", np.ascontiguousarray(np.repeat(img, 2, axis=1))),
            (f"{name}-flip", np.ascontiguousarray(img[:, ::-1])),
            (f"{name}-dark", (img // 3).astype(np.uint8)),
        ]
    a, b = photos.values()
    hh = min(a.shape[0], b.shape[0])
    out.append(("collage", np.ascontiguousarray(np.concatenate([a[:hh], b[:hh]], axis=1))))
    for i in range(6):
        h, w = rng.integers(120, 900, size=2)
        out.append((f"noise-{i}", rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)))
    blocks = rng.integers(0, 256, size=(8, 12, 3), dtype=np.uint8)
    out.append(("blocks", np.ascontiguousarray(np.kron(blocks, np.ones((40, 40, 1), np.uint8)))))
    out.append(("black", np.zeros((300, 400, 3), np.uint8)))
    out.append(("white", np.full((260, 260, 3), 255, np.uint8)))
    return out


INPUTS = _parity_inputs()


@pytest.fixture(scope="module", params=["face_mask_detection.caffemodel", "face_mask_detection.pth"])
def detector(request: pytest.FixtureRequest, aizoo_dir: Path) -> FaceMaskDetector:
    return FaceMaskDetector(aizoo_dir / request.param)


def test_at_least_twenty_inputs() -> None:
    assert len(INPUTS) >= 20


@pytest.mark.slow  # OpenCV DNN parity over every input, for each weight file
@pytest.mark.parametrize("name,image", INPUTS, ids=[n for n, _ in INPUTS])
def test_raw_outputs_match_reference(detector: FaceMaskDetector, reference, name: str, image: np.ndarray) -> None:
    ref_loc, ref_cls = reference.raw(image)
    loc, scores = detector.raw(detector.prepare([image]))
    assert loc.shape == (1, 5972, 4) and scores.shape == (1, 5972, 2)
    np.testing.assert_allclose(loc.numpy(), ref_loc, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(scores.numpy(), ref_cls, atol=TOLERANCE, rtol=0)


def test_batch_equals_single(detector: FaceMaskDetector) -> None:
    images = [img for _, img in INPUTS[:8]]
    batch_loc, batch_scores = detector.raw(detector.prepare(images))
    for i, img in enumerate(images):
        loc, scores = detector.raw(detector.prepare([img]))
        np.testing.assert_allclose(batch_loc[i : i + 1].numpy(), loc.numpy(), atol=1e-5)
        np.testing.assert_allclose(batch_scores[i : i + 1].numpy(), scores.numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "photo,label,score,box",
    [
        ("aizoo_demo2.jpg", "Mask", 0.9071, (222.5, 49.8, 327.5, 198.0)),
        ("skimage_astronaut.png", "NoMask", 0.8541, (182.1, 60.8, 278.7, 171.9)),
    ],
)
def test_detections_on_shared_photos(detector: FaceMaskDetector, photo: str, label: str, score: float, box) -> None:
    dets = detector.detect([read_rgb(MEDIA / photo)])[0]
    assert len(dets) == 1
    rec = dets.to_records()[0]
    assert rec["label"] == label
    assert rec["score"] == pytest.approx(score, abs=1e-4)
    assert (rec["x1"], rec["y1"], rec["x2"], rec["y2"]) == pytest.approx(box, abs=0.1)


def test_skipping_the_permute_breaks_parity(detector: FaceMaskDetector, reference) -> None:
    """The layout lesson: reshaping NCHW head maps without the NHWC permute gives wrong anchors."""
    image = INPUTS[0][1]
    ref_loc, ref_cls = reference.raw(image)
    x = torch.from_numpy(detector.prepare([image])).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        loc_maps, cls_maps = detector.model.head_maps(x)
        right = torch.cat([flatten_head(m, 4) for m in loc_maps], 1)
        wrong = torch.cat([flatten_head(m, 4, permute=False) for m in loc_maps], 1)
        wrong_cls = torch.sigmoid(torch.cat([flatten_head(m, 2, permute=False) for m in cls_maps], 1))
    np.testing.assert_allclose(right.numpy(), ref_loc, atol=TOLERANCE)
    assert np.abs(wrong.numpy() - ref_loc).max() > 0.1
    assert np.abs(wrong_cls.numpy() - ref_cls).max() > 0.1
    # And the wrong layout moves the detected face: its best anchor is elsewhere.
    assert wrong_cls[0, :, 0].argmax() != torch.from_numpy(ref_cls)[0, :, 0].argmax()
