"""``annotated/manifest.json`` that is empty, cut short or not of its shape costs a redraw, not
every later run and report (issue 17, item 11)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.results.report import load_output
from jobs.results.tracks import _Manifest
from sinks.schema import VIDEOS_SCHEMA

BROKEN = {"empty": "", "cut": '{"a.mp4": {"file": "a.mp4.mp4", "dig', "list": "[1, 2]", "binary": "\udcff"}


@pytest.mark.parametrize("text", list(BROKEN.values()), ids=list(BROKEN))
def test_a_run_sets_an_unreadable_manifest_aside_and_redraws(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "manifest.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with caplog.at_level(logging.WARNING):
        manifest = _Manifest(tmp_path)  # raised JSONDecodeError (so every --annotate run crashed)
    assert manifest.entries == {}
    assert not manifest.current("a.mp4", "d", tmp_path)
    assert not (tmp_path / "manifest.json").exists()
    assert len(list(tmp_path.glob("manifest.json.corrupt-*"))) == 1
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "manifest.json" in lines[0] and "drawn again" in lines[0]
    manifest.save()
    assert json.loads((tmp_path / "manifest.json").read_text()) == {}


def test_an_entry_of_the_wrong_shape_is_dropped_alone(tmp_path: Path) -> None:
    good = {"file": "a.mp4.mp4", "digest": "abc", "frames": 3}
    (tmp_path / "manifest.json").write_text(json.dumps({"a.mp4": good, "b.mp4": {"file": 3}, "c.mp4": []}))
    (tmp_path / "a.mp4.mp4").write_bytes(b"mp4")
    manifest = _Manifest(tmp_path)  # raised KeyError: 'digest'
    assert manifest.entries == {"a.mp4": good}
    assert manifest.current("a.mp4", "abc", tmp_path) and not manifest.current("b.mp4", "abc", tmp_path)


@pytest.mark.parametrize("text", list(BROKEN.values()), ids=list(BROKEN))
def test_the_report_reads_an_output_with_an_unreadable_manifest(tmp_path: Path, text: str) -> None:
    row = {f.name: None for f in VIDEOS_SCHEMA}
    row.update(video="a.mp4", path="/v/a.mp4", status="done", frames_processed=0, faces=0, masked=0, unmasked=0)
    pq.write_table(pa.Table.from_pylist([row], schema=VIDEOS_SCHEMA), tmp_path / "videos.parquet")
    (tmp_path / "annotated").mkdir()
    (tmp_path / "annotated" / "manifest.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    out = load_output(tmp_path)  # raised JSONDecodeError
    assert out.annotated == {}
    assert (tmp_path / "annotated" / "manifest.json").exists()  # a report only reads
    from jobs.results.manifest import read_manifest

    assert read_manifest(tmp_path / "nothing-here", set_aside=True) == {}
