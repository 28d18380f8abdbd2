"""A damaged committed file costs only its own frames (issue 17, item 11): real Parquet files,
cut short or overwritten, set aside at the next start and their frames planned again."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from sinks.store import OutputStore
from tests.sinks.test_store import _table, _write


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="cut-short"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: b"\x00" * len(data), id="zeroed"),
    ],
)
def test_a_damaged_part_is_set_aside_and_its_frames_planned_again(
    tmp_path: Path, damage, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "job"
    sink = OutputStore(out)
    sink.start({}, fingerprint="f")
    _write(sink, "a-0", "a.mp4", 0, 9)
    _write(sink, "b-0", "b.mp4", 0, 4)
    bad = out / "frames" / "part-a-0.parquet"
    bad.write_bytes(damage(bad.read_bytes()))

    with caplog.at_level(logging.WARNING):
        committed = OutputStore(out).start({}, fingerprint="f")  # raised "cannot write the output here" before
    assert committed == {"b.mp4": [(0, 4)]}
    assert not bad.exists()
    aside = list((out / "quarantine").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("part-a-0.parquet.")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "part-a-0.parquet" in lines[0] and "quarantine" in lines[0]
    assert "\n" not in lines[0]
    # the rest of the output reads as before, without the set-aside file
    assert pd.read_parquet(out / "frames").video.tolist() == ["b.mp4"] * 5


def test_a_part_with_a_garbled_segment_list_is_set_aside(tmp_path: Path) -> None:
    out = tmp_path / "job"
    sink = OutputStore(out)
    sink.start({}, fingerprint="f")
    _write(sink, "a-0", "a.mp4", 0, 9)
    path = out / "frames" / "part-a-0.parquet"
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({b"maskjobs.segments": b"[[not json"}), path)
    assert OutputStore(out).start({}, fingerprint="f") == {}
    assert len(list((out / "quarantine").iterdir())) == 1


def test_overwrite_clears_the_quarantine(tmp_path: Path) -> None:
    out = tmp_path / "job"
    (out / "quarantine").mkdir(parents=True)
    (out / "quarantine" / "part-x.parquet.1").write_bytes(b"x")
    OutputStore(out).start({}, fingerprint="f", overwrite=True)
    assert not (out / "quarantine").exists()


def test_input_identities_are_kept_with_a_shard_and_dropping_a_video_keeps_the_others(tmp_path: Path) -> None:
    import pyarrow as pa

    from sinks.layout import INPUTS_KEY

    out = tmp_path / "job"
    sink = OutputStore(out)
    sink.start({}, fingerprint="f")
    both = pa.concat_tables([_table("a.mp4", 0, 4), _table("b.mp4", 0, 2)])
    ids = {"a.mp4": {"size": 10, "mtime_ns": 1, "content_hash": "aa"},
           "b.mp4": {"size": 20, "mtime_ns": 2, "content_hash": "bb"}}
    path = sink.write("pack", both, [("a.mp4", 0, 4), ("b.mp4", 0, 2)], ids)
    assert sink.part_inputs() == [(path, ids)]

    assert sink.drop_videos(path, {"a.mp4"}) == 5
    assert sink.committed_ranges() == {"b.mp4": [(0, 2)]}
    assert sink.part_inputs() == [(path, {"b.mp4": ids["b.mp4"]})]
    assert pq.read_table(path).column("video").to_pylist() == ["b.mp4"] * 3
    assert json.loads(pq.read_schema(path).metadata[INPUTS_KEY]) == {"b.mp4": ids["b.mp4"]}
    assert sink.drop_videos(path, {"b.mp4"}) == 3  # nothing left: the file goes
    assert sink.committed_ranges() == {} and not Path(path).exists()


def test_a_transient_write_error_is_retried_and_a_lasting_one_raised(tmp_path: Path) -> None:
    """Issue 17 item 10: one refused write (disk full, an S3 hiccup) no longer loses the shard."""
    from sinks.atomic import atomic_write
    from tests.sinks.faulty_fs import fail_first, faulty_fs

    fs, handler = faulty_fs(fail_first(2))
    sink = OutputStore(str(tmp_path / "job"), filesystem=fs)
    sink.start({}, fingerprint="f")
    _write(sink, "a-0", "a.mp4", 0, 9)  # refused twice, written the third time
    assert len(handler.failures) == 2
    assert sink.committed_ranges() == {"a.mp4": [(0, 9)]}
    assert sorted(p.name for p in (tmp_path / "job" / "frames").iterdir()) == ["part-a-0.parquet"]  # nothing aside

    fs, handler = faulty_fs(lambda path, data: "never" in path)
    with pytest.raises(OSError) as info:
        atomic_write(fs, str(tmp_path / "never.bin"), lambda f: f.write(b"x"), attempts=3, backoff_s=0.01)
    assert info.value.errno == 28 and len(handler.failures) == 3
    assert not any("never" in p.name for p in tmp_path.iterdir())
