"""A submitted job runs to completion on a Ray head whose Python has maskjobs' dependencies and
not maskjobs (what ``configs/cluster.yaml`` builds): the shipped code is all the job needs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from jobs.cli.main import app
from tests.jobs.conftest import VideoSet
from tests.rayhead import RayHead

pytestmark = pytest.mark.slow  # a real Ray head, real videos, spawned processes


@pytest.fixture(scope="module")
def deps_head(deps_python: Path) -> Iterator[RayHead]:
    head = RayHead(num_cpus=2, python=deps_python).start()
    try:
        yield head
    finally:
        head.stop()
    assert not head.pids(), "processes of the test's Ray head outlived it"


def test_a_shipped_job_completes_where_only_the_dependencies_are_installed(
    deps_head: RayHead, video_set: VideoSet, caffe_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", deps_head.token)
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    cfg = tmp_path / "job.yaml"
    cfg.write_text("planning:\n  shard_frames: 24\n  pack_frames: 0\n")
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["submit", str(video_set.root / "leaves.mp4"), str(video_set.root / "mjpeg.mov"), "--out", str(out),
            "--address", deps_head.dashboard_url, "--weights", str(caffe_weights), "--config", str(cfg)]
    result = runner.invoke(app, [*args, "--wait"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "python -m jobs run " in result.stdout  # the shipped code, not an installed maskjobs
    frames = pd.read_parquet(out / "frames")
    assert not frames.duplicated(["video", "frame"]).any()
    assert frames.groupby("video").size().to_dict() == {"leaves.mp4": 64, "mjpeg.mov": 20}
    videos = pd.read_parquet(out / "videos.parquet")
    assert set(videos["status"]) == {"done"}
    assert (out / "tracks.parquet").is_file()

    # the same head cannot run an installed maskjobs: the environment really lacks it
    missing = runner.invoke(app, [*args, "--no-ship-code", "--out", str(tmp_path / "o2"), "--wait"],
                            catch_exceptions=False)
    assert missing.exit_code == 3, missing.output
    assert "FAILED" in missing.stderr
