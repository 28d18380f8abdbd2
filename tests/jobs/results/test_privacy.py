"""Privacy by default: thumbnails and annotated videos hide faces (their high-frequency energy,
the variance of the Laplacian, falls far below the raw face's) unless raw faces are asked for."""

from __future__ import annotations

import json

import cv2
import decord
import numpy as np
import pandas as pd
import pytest

from jobs.results.privacy import hide_faces
from jobs.results.render import crop_thumbnail
from tests.jobs.conftest import WalkSet


def _sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of ``image``'s grey levels: high for edges and texture."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def _inner(image: np.ndarray, box: tuple[float, float, float, float], keep: float = 0.6) -> np.ndarray:
    """The middle ``keep`` share of ``box`` in ``image`` (away from drawn edges and labels)."""
    x1, y1, x2, y2 = box
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * keep / 2, (y2 - y1) * keep / 2
    return image[int(cy - h):int(cy + h), int(cx - w):int(cx + w)]


@pytest.mark.parametrize("mode", ["blur", "pixelate"])
def test_hide_faces_removes_detail_inside_boxes_only(mode: str) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    raw = image.copy()
    box = np.array([[100.0, 50.0, 180.0, 150.0]])
    out = hide_faces(image, box, mode)
    face = (100, 50, 180, 150)
    assert _sharpness(_inner(out, face, 1.0)) < _sharpness(_inner(raw, face, 1.0)) / 50
    assert np.array_equal(out[:, :80], raw[:, :80]) and np.array_equal(out[:, 200:], raw[:, 200:])
    assert np.array_equal(hide_faces(raw.copy(), box, "raw"), raw)


@pytest.mark.slow  # reads the walkers job's output (a real `maskjobs run --annotate`) and decodes video
def test_thumbnails_and_annotated_videos_are_blurred_by_default(walk_set: WalkSet) -> None:
    job = json.loads((walk_set.out / "job.json").read_text())
    assert job["privacy"] == "blur" and job["config"]["privacy"]["mode"] == "blur"
    tracks = pd.read_parquet(walk_set.out / "tracks.parquet")
    shown = tracks[tracks.thumbnail.notna()]
    assert len(shown) == 1 and (shown.thumbnail_privacy == "blur").all()
    for r in shown.itertuples():
        frame = decord.VideoReader(str(walk_set.root / r.video))[int(r.best_frame)].asnumpy()
        box = np.array([r.x1, r.y1, r.x2, r.y2])
        raw = cv2.imdecode(np.frombuffer(crop_thumbnail(frame, box, privacy="raw"), np.uint8), cv2.IMREAD_GRAYSCALE)
        kept = cv2.imdecode(np.frombuffer(r.thumbnail, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert raw.shape == kept.shape
        h, w = raw.shape
        face = (w * 0.21, h * 0.21, w * 0.79, h * 0.79)  # the box inside its 35 % margin
        sharp_raw, sharp_kept = _sharpness(_inner(raw, face)), _sharpness(_inner(kept, face))
        print(f"{r.video} #{r.track}: Laplacian variance raw {sharp_raw:.1f}, kept {sharp_kept:.1f}")
        assert sharp_kept < sharp_raw / 10

    frames = pd.read_parquet(walk_set.out / "frames", columns=["video", "frame", "detections"])
    rows = frames[frames.video == "b_walk.mp4"].sort_values("frame").reset_index(drop=True)
    annotated = decord.VideoReader(str(walk_set.out / "annotated" / "b_walk.mp4.mp4"))
    source = decord.VideoReader(str(walk_set.root / "b_walk.mp4"))
    checked = 0
    for i in range(0, len(rows), 10):
        for d in rows.detections[i]:
            box = (d["x1"], d["y1"], d["x2"], d["y2"])
            if min(box) < 0 or box[2] > 640 or box[3] > 480 or box[2] - box[0] < 40:
                continue
            raw = _sharpness(_inner(source[int(rows.frame[i])].asnumpy(), box))
            drawn = _sharpness(_inner(annotated[i].asnumpy(), box))
            assert drawn < raw / 10, (i, d, raw, drawn)
            checked += 1
    assert checked >= 5
