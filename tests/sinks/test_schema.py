"""Frame tables and track ids written into them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

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


@pytest.mark.parametrize(
    "counts",
    [
        [2, 0, 1, 3],
        [1, 2, 0, 0],  # faceless frames at the end of a shard (a commit once failed on these)
        [0, 0, 3, 0],
        [0, 0, 0],
        [4],
    ],
)
def test_per_frame_totals(counts: list[int]) -> None:
    rng = np.random.default_rng(sum(counts))
    counts_arr = np.array(counts)
    labels = rng.integers(0, 2, counts_arr.sum())
    table = frames_table(
        np.array(["v"] * len(counts), object), np.arange(len(counts)), np.arange(len(counts)) / 25.0, counts_arr,
        labels, np.full(len(labels), 0.9), np.zeros((len(labels), 4), np.float32), ("Mask", "NoMask"),
    )
    rows = table.to_pylist()
    for row, n in zip(rows, counts):
        labels_of_row = [d["label"] for d in row["detections"]]
        assert row["faces"] == n == len(labels_of_row)
        assert row["masked"] == labels_of_row.count("Mask")
        assert row["unmasked"] == labels_of_row.count("NoMask")
        assert (row["compliance"] is None) == (n == 0)
        if n:
            assert row["compliance"] == pytest.approx(row["masked"] / n)
