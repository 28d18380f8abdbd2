"""``maskjobs run --tiles`` on generated 1080p footage with small faces of known boxes.

Whole-frame mode (the reference) finds none of them; tiled mode finds each once, with its
label, including faces placed across the seams between tiles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from benchmarks.groundtruth import FaceScene, FaceSprite, MovingFace
from benchmarks.videogen import write_video
from detector.boxes import box_iou
from detector.tiling import TileGrid, tile_boxes
from jobs.cli.main import app
from tests.conftest import read_rgb

pytestmark = pytest.mark.slow  # encodes a video and runs `maskjobs run` on a real local Ray

GRID = "3x5"  # the recommended grid for 1080p (benchmarks/README.md): 3 rows of 5 near-square tiles
FRAMES = 6
WIDTH, HEIGHT = 1920, 1080


def _seam_scene(masked: np.ndarray, unmasked: np.ndarray) -> FaceScene:
    """Six faces, 40 (masked) and 36 px wide: four straddling a vertical or horizontal seam of the
    grid (the inner side of a tile's overlap band) while they move, two inside tiles."""
    sprites = (FaceSprite.cut("Mask", masked), FaceSprite.cut("NoMask", unmasked))
    rows, cols = (int(n) for n in GRID.split("x"))
    tiles = tile_boxes(WIDTH, HEIGHT, TileGrid(rows, cols))[1:]
    seam_x = int(tiles[0, 2])  # the first tile's right side
    seam_x2 = int(tiles[2, 2])  # the third tile's right side
    seam_y = int(tiles[cols, 3])  # the second row's bottom
    faces = []
    for k, (sprite, width, x, y) in enumerate([
        (0, 40, seam_x - 37, 120), (1, 36, seam_x2 - 31, 160), (0, 40, 900, seam_y - 50),
        (1, 36, 1500, seam_y - 35), (0, 40, 300, 820), (1, 36, 1100, 840),
    ]):
        faces.append(MovingFace(sprite=sprite, width=width, start=(x, y), end=(x + 12, y + 6 * (k % 2)),
                                gain=(1.0, 0.85), blur=(0.0, 0.6)))
    # a plain wall with a gradient: this test is about seams and labels (the benchmark's
    # textured scenes measure false positives)
    ramp = np.linspace(60, 140, WIDTH, dtype=np.float32)[None, :, None]
    background = np.broadcast_to(ramp, (HEIGHT, WIDTH, 3)).astype(np.uint8)
    return FaceScene(sprites, tuple(faces), background, FRAMES)


@pytest.fixture(scope="module")
def seam_video(tmp_path_factory: pytest.TempPathFactory, masked_photo: Path, unmasked_photo: Path, ffmpeg: str) -> tuple[Path, FaceScene]:
    videos = tmp_path_factory.mktemp("tiled")
    scene = _seam_scene(read_rgb(masked_photo), read_rgb(unmasked_photo))
    path = write_video(videos / "seams.mp4", scene, FRAMES, ffmpeg=ffmpeg, codec="h264-main")
    return path, scene


def _run(video: Path, out: Path, weights: Path, *extra: str) -> pd.DataFrame:
    result = CliRunner().invoke(
        app, ["run", str(video.parent), "--out", str(out), "--weights", str(weights), *extra], catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return pd.read_parquet(out / "frames").sort_values("frame").reset_index(drop=True)


def test_whole_frame_finds_none_tiles_find_each_face_once(
    seam_video: tuple[Path, FaceScene], caffe_weights: Path, tmp_path: Path
) -> None:
    video, scene = seam_video
    whole = _run(video, tmp_path / "whole", caffe_weights)
    assert len(whole) == FRAMES and whole["faces"].sum() == 0

    tiled = _run(video, tmp_path / "tiled", caffe_weights, "--tiles", GRID)
    assert len(tiled) == FRAMES
    for i, row in tiled.iterrows():
        truth = scene.truth(int(row["frame"]))
        dets = list(row["detections"])
        boxes = np.array([[d["x1"], d["y1"], d["x2"], d["y2"]] for d in dets]).reshape(-1, 4)
        true_boxes = np.array([t["box"] for t in truth])
        iou = box_iou(boxes, true_boxes)
        assert len(dets) == len(truth), f"frame {i}: {len(dets)} detections for {len(truth)} faces: {dets}"
        for g, t in enumerate(truth):  # each face exactly once, with its label
            hits = np.where(iou[:, g] >= 0.3)[0]
            assert len(hits) == 1, f"frame {i}, face {t}: {len(hits)} detections"
            assert dets[hits[0]]["label"] == t["label"], f"frame {i}, face {t}: labelled {dets[hits[0]]['label']}"
    assert (tiled["masked"] == 3).all() and (tiled["unmasked"] == 3).all()

    videos = pd.read_parquet(tmp_path / "tiled" / "videos.parquet").iloc[0]
    assert videos["faces"] == 6 * FRAMES
    assert videos["min_face_px"] < 36 < 40 < pd.read_parquet(tmp_path / "whole" / "videos.parquet").iloc[0]["min_face_px"]
