"""The output store over pyarrow filesystems: local paths, ``file://`` URIs, a non-local one and S3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from detector.errors import InputError
from sinks import writer
from sinks.layout import REPORT_NAME
from sinks.location import is_uri
from sinks.policy import OutputConflictError
from sinks.store import OutputStore
from sinks.schema import FRAMES_SCHEMA
from tests.conftest import S3Server

CLASSES = ("Mask", "NoMask")


def _table(video: str, first: int, last: int):
    from sinks.schema import frames_table

    n = last - first + 1
    counts = np.ones(n, np.int32)
    return frames_table(
        np.array([video] * n, object), np.arange(first, last + 1), np.arange(first, last + 1) / 25.0, counts,
        np.arange(n) % 2, np.full(n, 0.9, np.float32), np.tile([1.0, 2.0, 30.0, 40.0], (n, 1)), CLASSES,
    )


def _write(sink: OutputStore, shard: str, video: str, first: int, last: int) -> None:
    sink.write(shard, _table(video, first, last), [(video, first, last)])


def _files(fs: pafs.FileSystem, directory: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


@pytest.mark.parametrize(
    "text,expected",
    [("s3://bucket/p", True), ("file:///tmp/x", True), ("mock:///x", True), ("/tmp/x", False),
     ("out", False), ("a:b/c", False), ("./x://y", False)],
)
def test_is_uri(text: str, expected: bool) -> None:
    assert is_uri(text) is expected


def test_a_file_uri_and_the_local_path_are_the_same_output(tmp_path: Path) -> None:
    out = tmp_path / "job"
    sink = OutputStore(out.as_uri())
    assert isinstance(sink.fs, pafs.LocalFileSystem) and sink.root == str(out)
    assert sink.start({"x": 1}, fingerprint="f") == {}
    _write(sink, "a-0", "a.mp4", 0, 9)
    assert OutputStore(out).committed_ranges() == {"a.mp4": [(0, 9)]}
    assert pd.read_parquet(out / "frames")["frame"].tolist() == list(range(10))


def test_a_non_local_filesystem_commits_each_shard_once_and_resumes() -> None:
    fs, _ = pafs.FileSystem.from_uri("mock:///")  # an in-memory, non-local pyarrow filesystem
    sink = OutputStore("bucket/job", filesystem=fs)
    assert sink.start({"config": "c"}, fingerprint="f1") == {}
    _write(sink, "a-0", "a.mp4", 0, 49)
    _write(sink, "a-1", "a.mp4", 50, 99)
    _write(sink, "a-1", "a.mp4", 50, 99)  # a retried shard replaces its file: still once
    assert _files(fs, "bucket/job/frames") == ["part-a-0.parquet", "part-a-1.parquet"]
    assert sink.frame_totals() == {"a.mp4": {"frames": 100, "faces": 100, "masked": 50, "unmasked": 50}}

    again = OutputStore("bucket/job", filesystem=fs)  # a rerun on the same output
    assert again.start({"config": "c"}, fingerprint="f1") == {"a.mp4": [(0, 49), (50, 99)]}
    with pytest.raises(OutputConflictError, match="different config"):
        OutputStore("bucket/job", filesystem=fs).start({}, fingerprint="f2")
    again.commit([], {"status": "done"})
    with fs.open_input_stream("bucket/job/job.json") as f:
        assert json.loads(f.read())["status"] == "done"
    with fs.open_input_file("bucket/job/frames/part-a-0.parquet") as f:
        assert pq.read_schema(f).remove_metadata() == FRAMES_SCHEMA


def test_a_write_that_fails_midway_leaves_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    fs, _ = pafs.FileSystem.from_uri("mock:///")
    sink = OutputStore("b/job", filesystem=fs)
    sink.start({}, fingerprint="f")
    _write(sink, "s-0", "v.mp4", 0, 9)

    def broken(table, where, **kwargs):
        where.write(b"PAR1 partial bytes")
        raise OSError("the connection dropped")

    monkeypatch.setattr(writer.pq, "write_table", broken)
    with pytest.raises(OSError, match="connection dropped"):
        _write(sink, "s-1", "v.mp4", 10, 19)
    assert _files(fs, "b/job/frames") == ["part-s-0.parquet"]  # nothing partial, nothing aside
    assert sink.committed_ranges() == {"v.mp4": [(0, 9)]}


def test_start_removes_files_left_aside_by_a_killed_writer(tmp_path: Path) -> None:
    sink = OutputStore(tmp_path / "job")
    sink.start({}, fingerprint="f")
    left = [
        tmp_path / "job" / "frames" / ".part-x.parquet.0123456789abcdef.part",
        tmp_path / "job" / ".videos.parquet.0123456789abcdef.part",  # the root's files are written aside too
        tmp_path / "job" / "frames" / ".tmp-dead-part-x.parquet",  # named as an earlier version did
    ]
    for path in left:
        path.write_bytes(b"partial")
    OutputStore(str(tmp_path / "job")).start({}, fingerprint="f")
    assert not list((tmp_path / "job" / "frames").iterdir())
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == ["frames", "job.json"]


def test_overwrite_clears_the_old_output_and_its_report(tmp_path: Path) -> None:
    sink = OutputStore(tmp_path / "job")
    sink.start({}, fingerprint="old")
    _write(sink, "s", "v.mp4", 0, 9)
    (tmp_path / "job" / REPORT_NAME).write_text("<html>the old job's report</html>")
    (tmp_path / "job" / "mine.txt").write_text("a user's own file")
    with pytest.raises(OutputConflictError):
        OutputStore(tmp_path / "job").start({}, fingerprint="new")
    assert (tmp_path / "job" / REPORT_NAME).is_file()  # refused: nothing removed
    OutputStore(tmp_path / "job").start({}, fingerprint="new", overwrite=True)
    assert not (tmp_path / "job" / REPORT_NAME).exists()
    assert (tmp_path / "job" / "mine.txt").is_file()  # only what maskjobs writes is cleared
    assert OutputStore(tmp_path / "job").committed_ranges() == {}


def test_an_unknown_scheme_is_one_line() -> None:
    with pytest.raises(InputError, match="not an output location pyarrow can open"):
        OutputStore("nosuchscheme://x/y")


def test_s3_output_commits_each_shard_once_and_resumes(s3_server: S3Server) -> None:
    """pyarrow's S3 filesystem against an S3 endpoint on 127.0.0.1: written aside, moved into place."""
    uri = s3_server.uri("sink/job")
    sink = OutputStore(uri)
    assert isinstance(sink.fs, pafs.S3FileSystem)
    assert sink.location == "s3://maskjobs/sink/job"  # no credentials in messages
    assert sink.start({"config": "c"}, fingerprint="f1") == {}
    _write(sink, "a-0", "a.mp4", 0, 9)
    _write(sink, "a-1", "a.mp4", 10, 24)
    assert _files(sink.fs, "maskjobs/sink/job/frames") == ["part-a-0.parquet", "part-a-1.parquet"]
    sink.commit([], {"fingerprint": "f1", "status": "done"})
    with sink.fs.open_output_stream("maskjobs/sink/job/frames/.part-a-2.parquet.0123456789abcdef.part") as f:
        f.write(b"PAR1 a killed writer's upload")
    again = OutputStore(uri)
    assert again.start({"config": "c"}, fingerprint="f1") == {"a.mp4": [(0, 9), (10, 24)]}
    assert again.frame_totals()["a.mp4"]["frames"] == 25
    assert _files(sink.fs, "maskjobs/sink/job/frames") == ["part-a-0.parquet", "part-a-1.parquet"]  # swept
    with pytest.raises(OutputConflictError, match="^s3://maskjobs/sink/job: holds the output"):
        OutputStore(uri).start({}, fingerprint="f2")
