"""``maskjobs run`` when the output refuses writes (issue 17, item 10): a disk that fills up or an
object store that drops a request, on a real local Ray with real videos. The output is a real
local folder behind :class:`tests.sinks.faulty_fs.FaultyHandler`, which refuses chosen writes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from benchmarks.videogen import Scene, write_video
from jobs.cli.main import app
from sinks.store import OutputStore
from tests.sinks.faulty_fs import Rule, fail_first, faulty_fs

pytestmark = pytest.mark.slow  # every test runs `maskjobs run` on real videos and a real local Ray

SMALL_SHARDS = "planning:\n  shard_frames: 16\n  pack_frames: 16\n"


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory, scene: Scene, ffmpeg: str) -> Path:
    root = tmp_path_factory.mktemp("commit-videos")
    write_video(root / "good.mp4", scene, 40, ffmpeg=ffmpeg, gop=8)
    write_video(root / "bad.mp4", scene, 24, ffmpeg=ffmpeg, gop=8)
    return root


def _run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, videos: Path, weights: Path, rule: Rule):
    fs, handler = faulty_fs(rule)
    monkeypatch.setattr("sinks.store.OutputStore", lambda out: OutputStore(str(out), filesystem=fs))
    cfg = tmp_path / "job.yaml"
    cfg.write_text(SMALL_SHARDS)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["run", str(videos), "--out", str(out), "--weights", str(weights), "--config", str(cfg)],
    )
    return out, result, handler


def test_a_refused_commit_is_retried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, videos: Path,
                                     caffe_weights: Path) -> None:
    out, result, handler = _run(monkeypatch, tmp_path, videos, caffe_weights, fail_first(2))
    assert result.exit_code == 0, result.output  # the first refusal aborted the job before
    parts = list((out / "frames").glob("part-*.parquet"))
    assert len(parts) >= 3 and len(handler.failures) == 2 * len(parts)  # every shard file was refused twice
    table = pq.read_table(out / "frames").to_pandas()
    assert table.groupby("video").frame.nunique().to_dict() == {"bad.mp4": 24, "good.mp4": 40}
    assert len(table) == 64  # exactly once
    assert (pd.read_parquet(out / "videos.parquet").status == "done").all()


def test_a_shard_that_cannot_be_written_fails_only_its_video(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, videos: Path, caffe_weights: Path
) -> None:
    def rule(path: str, data: bytes) -> bool:  # the shard files holding bad.mp4's rows (named in their footer)
        return "part-" in path and b"bad.mp4" in data

    out, result, handler = _run(monkeypatch, tmp_path, videos, caffe_weights, rule)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    rows = pd.read_parquet(out / "videos.parquet").set_index("video")
    assert rows.loc["good.mp4", "status"] == "done" and rows.loc["good.mp4", "frames_processed"] == 40
    assert rows.loc["bad.mp4", "status"] == "failed"
    assert "could not be written" in rows.loc["bad.mp4", "error"] and "No space left" in rows.loc["bad.mp4", "error"]
    assert set(pq.read_table(out / "frames").column("video").to_pylist()) == {"good.mp4"}
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad.mp4" in errors[0]


def test_a_job_that_crashes_exits_3_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, videos: Path, caffe_weights: Path
) -> None:
    out, result, _ = _run(monkeypatch, tmp_path, videos, caffe_weights, lambda path, data: "videos.parquet" in path)
    assert result.exit_code == 3, result.output  # 1 ("some videos failed") and a traceback before
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the job crashed" in errors[0] and "No space left" in errors[0], result.stderr
    assert len(pq.read_table(out / "frames")) == 64  # what was committed is kept
