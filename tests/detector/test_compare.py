"""``detector.compare``: equal for float32 ports, same faces for int8."""

from __future__ import annotations

import numpy as np
import pytest

from detector.compare import box_iou, equal, same_faces
from detector.detections import Detections


def _dets(boxes, scores, labels) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32), np.array(labels, np.int64))


REF = _dets([[10, 10, 50, 60], [100, 20, 160, 90]], [0.9, 0.7], [0, 1])


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 3]], float)
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0, 0.0]])


def test_equal_ignores_order_only() -> None:
    swapped = _dets([[100, 20, 160, 90], [10, 10, 50, 60]], [0.7, 0.9], [1, 0])
    assert equal(REF, swapped) and same_faces(REF, swapped)


@pytest.mark.parametrize(
    ("got", "is_equal", "is_same"),
    [
        (_dets([[12, 10, 52, 60], [100, 20, 160, 90]], [0.9, 0.7], [0, 1]), False, True),  # 2 px off
        (_dets([[10, 10, 50, 60], [100, 20, 160, 90]], [0.9, 0.72], [0, 1]), False, True),  # score off
        (_dets([[10, 10, 50, 60], [100, 20, 160, 90]], [0.9, 0.7], [0, 0]), False, False),  # relabelled
        (_dets([[10, 10, 50, 60]], [0.9], [0]), False, False),  # a face lost
        (_dets([[30, 40, 70, 90], [100, 20, 160, 90]], [0.9, 0.7], [0, 1]), False, False),  # moved away
        (_dets([[10.5, 10, 50, 60.5], [100, 20, 160, 90]], [0.9004, 0.7], [0, 1]), True, True),
    ],
)
def test_tolerances(got: Detections, is_equal: bool, is_same: bool) -> None:
    assert equal(REF, got) is is_equal
    assert same_faces(REF, got) is is_same


def test_empty_frames_are_equal() -> None:
    assert equal(Detections.empty(), Detections.empty()) and same_faces(Detections.empty(), Detections.empty())
    assert not same_faces(Detections.empty(), REF)


def test_one_face_of_got_matches_one_face_of_ref() -> None:
    twice = _dets([[10, 10, 50, 60], [11, 10, 51, 60]], [0.9, 0.8], [0, 0])
    near = _dets([[10, 10, 50, 60], [300, 300, 340, 350]], [0.9, 0.8], [0, 0])
    assert not same_faces(twice, near)
