from __future__ import annotations

import numpy as np
import pytest

from detector.anchors import generate_anchors
from detector.spec import SPECS


@pytest.mark.parametrize("name,maps,count", [("aizoo-260", (33, 17, 9, 5, 3), 5972), ("aizoo-360", (45, 23, 12, 6, 4), 11000)])
def test_feature_maps_and_count(name: str, maps: tuple, count: int) -> None:
    spec = SPECS[name]
    assert spec.feature_map_sizes == maps
    assert spec.num_anchors == count
    assert generate_anchors(spec).shape == (count, 4)


def test_order_is_row_column_anchor() -> None:
    anchors = generate_anchors(SPECS["aizoo-260"]).numpy()
    ctr = (anchors[:, :2] + anchors[:, 2:]) / 2
    side = 33
    # first cell: 4 anchors centred at (0.5/33, 0.5/33); the next cell is one column right
    np.testing.assert_allclose(ctr[:4], [[0.5 / side, 0.5 / side]] * 4, atol=1e-6)
    np.testing.assert_allclose(ctr[4], [1.5 / side, 0.5 / side], atol=1e-6)
    np.testing.assert_allclose(ctr[4 * side], [0.5 / side, 1.5 / side], atol=1e-6)
    wh = anchors[:4, 2:] - anchors[:4, :2]
    np.testing.assert_allclose(wh[0], [0.04, 0.04], atol=1e-6)
    np.testing.assert_allclose(wh[1], [0.056, 0.056], atol=1e-6)
    np.testing.assert_allclose(wh[2], [0.04 * np.sqrt(0.62), 0.04 / np.sqrt(0.62)], atol=1e-6)
    np.testing.assert_allclose(wh[3], [0.04 * np.sqrt(0.42), 0.04 / np.sqrt(0.42)], atol=1e-6)
