"""Frame tables and track ids written into them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sinks.schema import FRAMES_SCHEMA, frames_table, with_tracks


def _table() -> pa.Table:
    counts = np.array([2, 0, 1, 3])
    boxes = np.arange(24, dtype=np.float32).reshape(6, 4)
    return frames_table(
        np.array(["v"] * 4, object), np.arange(4), np.arange(4) / 25.0, counts, np.array([0, 1, 1, 0, 0, 1]),
        np.linspace(0.5, 1, 6), boxes, ("Mask", "NoMask"),
    )


def test_new_rows_have_no_track_and_with_tracks_sets_them() -> None:
    table = _table()
    assert table.schema == FRAMES_SCHEMA
    flat = table.column("detections").combine_chunks().flatten()
    assert flat.field("track").null_count == 6
    out = with_tracks(table, np.array([1, 2, -1, 1, 3, -1]))
    assert out.schema == FRAMES_SCHEMA
    dets = out.column("detections").to_pylist()
    assert [[d["track"] for d in row] for row in dets] == [[1, 2], [], [None], [1, 3, None]]
    # everything else is unchanged
    for name in ("label", "score", "x1", "y2"):
        assert [[d[name] for d in row] for row in dets] == [[d[name] for d in row] for row in table.column("detections").to_pylist()]


def test_with_tracks_on_a_slice() -> None:
    part = _table().slice(2, 2)  # rows 2 and 3: detections 2..5
    out = with_tracks(part, np.array([7, 8, 9, -1]))
    assert [[d["track"] for d in row] for row in out.column("detections").to_pylist()] == [[7], [8, 9, None]]
    assert [[d["x1"] for d in row] for row in out.column("detections").to_pylist()] == [[8.0], [12.0, 16.0, 20.0]]
