"""Tiled detection: tile geometry, merging across tiles, and the real model on small faces."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.detections import Detections
from detector.predictor import FaceMaskDetector
from detector.reliability import recall_curve, reliable_fraction, reliable_width
from detector.tiling import TileGrid, auto_grid, cut_tiles, merge_tiles, parse_tiles, resolve_grid, tile_boxes
from tests.conftest import read_rgb

MASK, NOMASK = 0, 1


def _dets(*rows: tuple[float, float, float, float, float, int]) -> Detections:
    a = np.array(rows, np.float64).reshape(-1, 6)
    return Detections(a[:, :4].astype(np.float32), a[:, 4].astype(np.float32), a[:, 5].astype(np.int64))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3x3", TileGrid(3, 3)), (" 2X4 ", TileGrid(2, 4)), ("off", None), (None, None), ("1x1", None), ("auto", "auto")],
)
def test_parse_tiles(text: str | None, expected: object) -> None:
    assert parse_tiles(text) == expected


@pytest.mark.parametrize("bad", ["3", "3x", "x3", "0x3", "3x3x3", "big", "-1x2", "20x20"])
def test_parse_tiles_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="tile|tiles"):
        parse_tiles(bad)


@pytest.mark.parametrize(("width", "height"), [(1920, 1080), (3840, 2160), (641, 359), (100, 3000)])
@pytest.mark.parametrize("grid", [TileGrid(3, 3), TileGrid(4, 4), TileGrid(2, 5, overlap=0.1), TileGrid(3, 3, whole=False)])
def test_tiles_cover_the_frame_and_overlap(width: int, height: int, grid: TileGrid) -> None:
    boxes = tile_boxes(width, height, grid)
    assert boxes.shape == (grid.per_frame, 4)
    tiles = boxes[1:] if grid.whole else boxes
    if grid.whole:
        assert boxes[0].tolist() == [0, 0, width, height]
    assert (tiles[:, :2] >= 0).all() and (tiles[:, 2] <= width).all() and (tiles[:, 3] <= height).all()
    covered = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in tiles:
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    xs = sorted({(x1, x2) for x1, _, x2, _ in tiles.tolist()})
    side = xs[0][1] - xs[0][0]
    for (a1, a2), (b1, b2) in zip(xs, xs[1:]):  # neighbours share at least the overlap band
        assert a2 - b1 >= int(grid.overlap * side) - 1
        assert b2 - b1 == side


def test_cut_tiles_resizes_each_tile() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 100:] = 255
    out = cut_tiles(image, np.array([[0, 0, 100, 100], [100, 0, 200, 100]]), 32)
    assert out.shape == (2, 32, 32, 3)
    assert out[0].max() == 0 and out[1].min() == 255


def test_merge_maps_boxes_to_frame_pixels() -> None:
    tiles = np.array([[0, 0, 1000, 1000], [0, 0, 600, 600], [400, 0, 1000, 600]])
    merged = merge_tiles([Detections.empty(), _dets((100, 100, 140, 150, 0.9, MASK)), Detections.empty()], tiles, 1000, 1000)
    assert merged.boxes.tolist() == [[100, 100, 140, 150]] and merged.labels.tolist() == [MASK]
    merged = merge_tiles([Detections.empty(), Detections.empty(), _dets((100, 100, 140, 150, 0.9, NOMASK))], tiles, 1000, 1000)
    assert merged.boxes.tolist() == [[500, 100, 540, 150]]


def test_a_face_on_a_seam_is_one_detection() -> None:
    """Tile 1 (0..600) sees the face 580..620 cut at its right side, tile 2 (400..1000) sees it
    whole: the cut box, though it scores higher, goes; the whole one stays."""
    tiles = np.array([[0, 0, 600, 600], [400, 0, 1000, 600]])
    cut = _dets((580, 100, 600, 150, 0.95, NOMASK))
    whole = _dets((180, 100, 220, 150, 0.8, MASK))  # tile 2's pixels: 580..620
    merged = merge_tiles([cut, whole], tiles, 1000, 600)
    assert len(merged) == 1
    assert merged.boxes[0].tolist() == [580, 100, 620, 150] and merged.labels.tolist() == [MASK]


def test_a_box_at_the_frames_border_is_not_cut() -> None:
    """A face at the frame's own edge has nothing fuller to yield to: it stays."""
    tiles = np.array([[0, 0, 600, 600], [400, 0, 1000, 600]])
    merged = merge_tiles([_dets((0, 100, 30, 150, 0.9, MASK)), Detections.empty()], tiles, 1000, 600)
    assert len(merged) == 1


def test_the_same_face_in_two_tiles_and_the_whole_frame_is_one() -> None:
    tiles = np.array([[0, 0, 1000, 600], [0, 0, 600, 600], [400, 0, 1000, 600]])
    merged = merge_tiles(
        [_dets((500, 100, 541, 151, 0.7, NOMASK)), _dets((501, 100, 540, 150, 0.9, NOMASK)),
         _dets((100, 101, 141, 150, 0.85, NOMASK))],
        tiles, 1000, 600,
    )
    assert len(merged) == 1 and merged.scores.tolist() == [pytest.approx(0.9)]


def test_two_faces_side_by_side_in_the_overlap_stay_two() -> None:
    tiles = np.array([[0, 0, 600, 600], [400, 0, 1000, 600]])
    a, b = (450, 100, 490, 150), (500, 100, 540, 150)
    merged = merge_tiles(
        [_dets((*a, 0.9, MASK), (*b, 0.8, NOMASK)), _dets((a[0] - 400, 100, a[2] - 400, 150, 0.85, MASK),
                                                         (b[0] - 400, 100, b[2] - 400, 150, 0.7, NOMASK))],
        tiles, 1000, 600,
    )
    assert sorted(merged.labels.tolist()) == [MASK, NOMASK]


def test_merge_of_nothing_is_empty() -> None:
    tiles = np.array([[0, 0, 10, 10]])
    assert len(merge_tiles([Detections.empty()], tiles, 10, 10)) == 0
    with pytest.raises(ValueError, match="2 tiles"):
        merge_tiles([Detections.empty()], np.array([[0, 0, 5, 5], [5, 5, 10, 10]]), 10, 10)


def test_auto_grid_reaches_the_target_face_size() -> None:
    assert auto_grid(640, 360, target_px=32, min_fraction=0.05) is None  # 0.05 * 640 = 32
    grid = auto_grid(1920, 1080, target_px=32, min_fraction=0.066)
    assert grid == TileGrid(3, 5)  # near-square tiles, 480 px wide
    side = tile_boxes(1920, 1080, grid)[-1]
    assert (side[2] - side[0]) * 0.066 <= 32
    s = tile_boxes(1920, 1080, TileGrid(2, 4))[-1]  # the next smaller near-square grid falls short
    assert (s[2] - s[0]) * 0.066 > 32
    four_k = auto_grid(3840, 2160, target_px=32, min_fraction=0.066)
    assert four_k is not None and four_k.cols > grid.cols
    portrait = auto_grid(1080, 1920, target_px=32, min_fraction=0.066)
    assert portrait is not None and portrait.rows > portrait.cols
    assert resolve_grid("auto", 1920, 1080, min_fraction=0.066) == grid
    assert resolve_grid(None, 1920, 1080) is None


def test_the_stored_curve_gives_a_reliable_width() -> None:
    curve = recall_curve(260)
    assert set(curve) == {"Mask", "NoMask"} and all(curve.values())
    f = reliable_fraction(260)
    assert 0 < f < 0.2
    assert reliable_width(1920, 260) == pytest.approx(1920 * f)
    with pytest.raises(KeyError, match="input size 123"):
        recall_curve(123)


def _small_face_frame(photo: np.ndarray, box: tuple[float, float, float, float], face_px: int, at: tuple[int, int]) -> np.ndarray:
    """A 1920x1080 grey frame with ``photo`` pasted so its face (``box``) is ``face_px`` wide."""
    s = face_px / (box[2] - box[0])
    small = cv2.resize(photo, (round(photo.shape[1] * s), round(photo.shape[0] * s)), interpolation=cv2.INTER_AREA)
    frame = np.full((1080, 1920, 3), 90, np.uint8)
    x, y = at
    frame[y : y + small.shape[0], x : x + small.shape[1]] = small
    return frame


def test_tiles_find_a_small_face_the_whole_frame_misses(caffe_weights: Path, unmasked_photo: Path) -> None:
    """A 48 px unmasked face in 1080p, placed across the seam of the first two 3x3 tiles: the
    whole frame finds nothing, 3x3 tiles find it once, with its label."""
    detector = FaceMaskDetector(caffe_weights)
    seam = int(tile_boxes(1920, 1080, TileGrid(3, 3))[2, 2])  # right side of the first tile
    frame = _small_face_frame(read_rgb(unmasked_photo), (182.1, 60.8, 278.7, 171.9), 48, (seam - 110, 300))
    assert len(detector.detect([frame])[0]) == 0
    tiled = detector.detect([frame, frame[:, ::-1].copy()], tiles=TileGrid(3, 3))
    for dets in tiled:
        assert dets.label_names == ["NoMask"]
    x1 = float(tiled[0].boxes[0, 0])
    assert seam - 110 < x1 + 10 and x1 < seam  # the face, on the seam


def test_a_coarse_box_around_a_finer_stronger_face_goes() -> None:
    """The whole frame calls a region holding a small face a face; the tile that saw all of
    that region found only the small face, scoring higher: the coarse box goes."""
    tiles = np.array([[0, 0, 1920, 1080], [0, 0, 768, 432]])
    merged = merge_tiles(
        [_dets((500, 100, 700, 320, 0.68, NOMASK)), _dets((550, 120, 600, 170, 0.97, NOMASK))], tiles, 1920, 1080,
    )
    assert merged.boxes.tolist() == [[550, 120, 600, 170]]
    # a weaker small box, or one from a picture that did not see the whole region, leaves it
    assert len(merge_tiles([_dets((500, 100, 700, 320, 0.98, NOMASK)), _dets((550, 120, 600, 170, 0.97, NOMASK))],
                           tiles, 1920, 1080)) == 2
    part = np.array([[0, 0, 1920, 1080], [0, 0, 650, 432]])
    assert len(merge_tiles([_dets((500, 100, 700, 320, 0.68, NOMASK)), _dets((550, 120, 600, 170, 0.97, NOMASK))],
                           part, 1920, 1080)) == 2
