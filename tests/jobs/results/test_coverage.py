"""What a video's compliance covers: the reliable face size per mode, and counts above it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from detector.reliability import reliable_fraction
from detector.spec import CLASS_NAMES
from detector.tiling import TileGrid, tile_boxes
from jobs.config import DetectorConfig
from jobs.results.coverage import COLUMNS, NEAR, add_coverage, coverage_totals, min_face_px
from sinks.schema import frames_table

MASK, NOMASK = 0, 1


def _table(faces: list[tuple[str, int, float, int]]):
    """One frame per face: ``(video, label, width, frame)``."""
    n = len(faces)
    boxes = np.array([[100, 100, 100 + w, 100 + w] for _, _, w, _ in faces], np.float32).reshape(-1, 4)
    return frames_table(
        np.array([v for v, *_ in faces], object), np.array([f for *_, f in faces]), np.zeros(n), np.ones(n, np.int32),
        np.array([lab for _, lab, _, _ in faces]), np.full(n, 0.9, np.float32), boxes, CLASS_NAMES,
    )


def test_counts_above_the_reliable_width() -> None:
    table = _table([
        ("a", MASK, 100, 0), ("a", NOMASK, 100, 1), ("a", NOMASK, 30, 2), ("a", NOMASK, 45, 3),
        ("b", MASK, 20, 0),
    ])
    got = coverage_totals(table, {"a": 40.0, "b": 40.0, "c": 40.0})
    assert got["a"] == {"min_face_px": 40.0, "faces_reliable": 3, "masked_reliable": 1,
                        "compliance_reliable": pytest.approx(1 / 3), "faces_near_min": 2}  # 30 and 45 < 1.25 x 40
    assert got["b"]["faces_reliable"] == 0 and got["b"]["compliance_reliable"] is None and got["b"]["faces_near_min"] == 1
    assert got["c"]["faces_reliable"] == 0 and got["c"]["faces_near_min"] == 0
    assert NEAR == 1.25


def test_tiles_lower_the_reliable_width_by_the_tile_size() -> None:
    whole = DetectorConfig()
    tiled = dataclasses.replace(whole, tiles="4x4")
    f = reliable_fraction(260)
    assert min_face_px(1920, 1080, whole, input_size=260) == pytest.approx(f * 1920)
    side = tile_boxes(1920, 1080, TileGrid(4, 4))[1]
    assert min_face_px(1920, 1080, tiled, input_size=260) == pytest.approx(f * (side[2] - side[0]))
    auto = dataclasses.replace(whole, tiles="auto", tiles_target_px=32)
    assert min_face_px(1920, 1080, auto, input_size=260) <= 32
    assert min_face_px(3840, 2160, auto, input_size=260) <= 32


def test_add_coverage_leaves_unprobed_videos_null() -> None:
    rows = add_coverage([{"video": "a"}, {"video": "b"}], {"a": dict.fromkeys(COLUMNS, 1)})
    assert rows[0]["faces_reliable"] == 1 and rows[1] == {"video": "b", **dict.fromkeys(COLUMNS)}
