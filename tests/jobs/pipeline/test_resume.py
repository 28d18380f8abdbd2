"""Resume over inputs that changed (issue 17, item 2): file identities, and the rows of a changed
video dropped from real committed Parquet files while the others' stay."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.identity import EDGE_BYTES, content_hash, identify, same_file
from jobs.pipeline.resume import drop_changed_videos
from sinks.store import OutputStore
from tests.sinks.test_store import _table


def test_identity_sees_a_replaced_grown_or_cut_file_not_a_copy(tmp_path: Path) -> None:
    path = tmp_path / "cam.mp4"
    data = os.urandom(3 * EDGE_BYTES)
    path.write_bytes(data)
    first = identify(str(path))
    assert first is not None and first["size"] == len(data) and len(first["content_hash"]) == 64

    copy = tmp_path / "copy.mp4"
    copy.write_bytes(data)
    os.utime(copy, ns=(1, 1))
    assert same_file(first, identify(str(copy)))  # same bytes, another mtime

    tail = bytearray(data)
    tail[-1] ^= 1
    path.write_bytes(bytes(tail))
    assert not same_file(first, identify(str(path)))  # re-encoded / replaced: its end differs
    path.write_bytes(data + b"more")
    assert not same_file(first, identify(str(path)))  # still being written: grown
    path.write_bytes(data[: EDGE_BYTES])
    assert not same_file(first, identify(str(path)))  # a shorter replacement
    assert content_hash(str(path), EDGE_BYTES) != first["content_hash"]


def test_identity_of_what_has_none(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "live.ts")
    assert identify(str(tmp_path / "live.ts")) is None  # never opened: reading a pipe would consume it
    assert identify(str(tmp_path / "gone.mp4")) is None
    assert same_file(None, {"size": 1, "content_hash": "x"}) and same_file({"size": 1}, None)


def test_a_changed_videos_rows_are_dropped_and_the_others_kept(tmp_path: Path) -> None:
    sink = OutputStore(tmp_path / "job")
    sink.start({}, fingerprint="f")
    old = {"size": 10, "mtime_ns": 1, "content_hash": "aa"}
    other = {"size": 20, "mtime_ns": 2, "content_hash": "bb"}
    pack = pa.concat_tables([_table("cam.mp4", 0, 4), _table("other.mp4", 0, 2)])
    sink.write("pack", pack, [("cam.mp4", 0, 4), ("other.mp4", 0, 2)], {"cam.mp4": old, "other.mp4": other})
    sink.write("cam-5", _table("cam.mp4", 5, 9), [("cam.mp4", 5, 9)], {"cam.mp4": old})
    sink.write("legacy", _table("old.mp4", 0, 3), [("old.mp4", 0, 3)])  # before identities were recorded

    same = drop_changed_videos(sink, {"cam.mp4": dict(old, mtime_ns=99), "other.mp4": other, "old.mp4": old})
    assert same == {}
    assert {k: sorted(v) for k, v in sink.committed_ranges().items()} == {
        "cam.mp4": [(0, 4), (5, 9)], "other.mp4": [(0, 2)], "old.mp4": [(0, 3)]}

    new = {"size": 7, "mtime_ns": 3, "content_hash": "cc"}
    changed = drop_changed_videos(sink, {"cam.mp4": new, "other.mp4": other, "old.mp4": new})
    assert changed == {"cam.mp4": "its size went from 10 to 7 bytes"}
    assert sink.committed_ranges() == {"other.mp4": [(0, 2)], "old.mp4": [(0, 3)]}
    rows = pq.read_table(tmp_path / "job" / "frames").column("video").to_pylist()
    assert sorted(rows) == ["old.mp4"] * 4 + ["other.mp4"] * 3
    assert not (tmp_path / "job" / "frames" / "part-cam-5.parquet").exists()
