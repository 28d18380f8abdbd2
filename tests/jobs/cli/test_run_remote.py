"""``maskjobs run`` over an ``s3://`` prefix (moto's S3 on 127.0.0.1): the same rows as the same
files read locally, credentials from the environment and nowhere in the output, failures isolated,
resumable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from jobs.cli.main import app
from tests.conftest import S3Server
from tests.jobs.conftest import VideoSet

pytestmark = pytest.mark.slow  # real videos, a real local Ray

SECRET = "s3cr3t-never-shown-0123456789"
FILES = ("leaves.mp4", "mjpeg.mov", "cams/vp9.webm", "notes.mkv")  # notes.mkv is not a video
CONFIG = "planning:\n  shard_frames: 24\n  pack_frames: 30\n"


def _frames(out: Path) -> pd.DataFrame:
    frames = pd.read_parquet(out / "frames").sort_values(["video", "frame"]).reset_index(drop=True)
    frames["detections"] = frames["detections"].map(lambda ds: [tuple(sorted(d.items())) for d in ds])
    return frames


def test_an_s3_prefix_gives_the_rows_of_the_same_files_read_locally(
    video_set: VideoSet, caffe_weights: Path, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("MASKJOBS_STAGE_DIR", str(tmp_path / "stage"))
    local = tmp_path / "footage"  # the folder named as the prefix: the default camera is the folder
    for name in FILES:
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(video_set.root / name, local / name)
        s3_server.put(f"footage/{name}", (video_set.root / name).read_bytes())
    cfg = tmp_path / "job.yaml"
    cfg.write_text(CONFIG)
    runner = CliRunner()
    common = ["--weights", str(caffe_weights), "--config", str(cfg)]
    by_path = runner.invoke(app, ["run", str(local), "--out", str(tmp_path / "a"), *common], catch_exceptions=False)
    prefix = s3_server.env_uri("footage/")
    by_uri = runner.invoke(app, ["run", prefix, "--out", str(tmp_path / "b"), *common], catch_exceptions=False)
    assert by_path.exit_code == by_uri.exit_code == 1, by_uri.output  # notes.mkv fails; the others are done
    assert "error: s3://maskjobs/footage/notes.mkv: not a readable video" in by_uri.stderr

    pd.testing.assert_frame_equal(_frames(tmp_path / "a"), _frames(tmp_path / "b"))
    assert _frames(tmp_path / "b").groupby("video").size().to_dict() == {
        "cams/vp9.webm": 36, "leaves.mp4": 64, "mjpeg.mov": 20,
    }
    videos = pd.read_parquet(tmp_path / "b" / "videos.parquet").set_index("video")
    assert videos.loc["leaves.mp4", "path"] == "s3://maskjobs/footage/leaves.mp4"  # no endpoint, no credentials
    assert videos.loc["notes.mkv", "status"] == "failed" and (videos["status"] == "done").sum() == 3
    tracks = [pd.read_parquet(tmp_path / o / "tracks.parquet").drop(columns="thumbnail") for o in "ab"]
    pd.testing.assert_frame_equal(tracks[0], tracks[1])  # thumbnails decoded from the staged copies too
    for path in (tmp_path / "b").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in by_uri.output
    assert list((tmp_path / "stage").glob("*.mp4")) == []  # the stage cache is cleared at the job's end

    again = runner.invoke(app, ["run", prefix, "--out", str(tmp_path / "b"), *common], catch_exceptions=False)
    assert again.exit_code == 1 and "nothing left to process" in again.stdout
    pd.testing.assert_frame_equal(_frames(tmp_path / "a"), _frames(tmp_path / "b"))


def test_a_transport_stream_in_a_bucket_is_not_decoded_again_on_a_rerun(
    video_set: VideoSet, caffe_weights: Path, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    ffmpeg: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """A bucket's file has no identity (size, hash) in the shard files, only how its frames were
    numbered (``reader``): a ``.ts`` read through its Matroska copy keeps its rows on a rerun,
    rather than counting as rows of an earlier version and being decoded again every time."""
    import subprocess

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("MASKJOBS_STAGE_DIR", str(tmp_path / "stage"))
    ts = tmp_path / "cam.ts"
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-i", str(video_set.root / "leaves.mp4"), "-c", "copy",
                    "-f", "mpegts", str(ts)], check=True)
    s3_server.put("streams/cam.ts", ts.read_bytes())
    cfg = tmp_path / "job.yaml"
    cfg.write_text(CONFIG)
    args = ["run", s3_server.env_uri("streams/"), "--out", str(tmp_path / "out"), "--weights", str(caffe_weights),
            "--config", str(cfg)]
    first = CliRunner().invoke(app, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    rows = _frames(tmp_path / "out")
    assert len(rows) == 64
    caplog.clear()
    again = CliRunner().invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 0 and "nothing left to process" in again.stdout, again.output
    assert not [r for r in caplog.records if "earlier version" in r.getMessage()]
    pd.testing.assert_frame_equal(_frames(tmp_path / "out"), rows)
