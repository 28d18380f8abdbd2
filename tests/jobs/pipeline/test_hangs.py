"""Hung and busy detector actors, end to end: ``maskjobs run`` on a real local Ray.

The faults are real (a detector call that sleeps, or never returns) and injected through
``$MASKJOBS_TEST_FAULT`` (:mod:`jobs.faults`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from benchmarks.videogen import Scene, write_video
from jobs.cli.main import app

pytestmark = pytest.mark.slow


def _videos(root: Path, scene: Scene, ffmpeg: str, n: int, frames: int) -> None:
    root.mkdir()
    for i in range(n):
        write_video(root / f"v{i}.mp4", scene, frames, ffmpeg=ffmpeg, first=i * 7)


def _run(tmp_path: Path, root: Path, caffe_weights: Path, config: str):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(config)
    t0 = time.monotonic()
    result = CliRunner().invoke(
        app, ["run", str(root), "--out", str(tmp_path / "o"), "--weights", str(caffe_weights), "--config", str(cfg)],
        catch_exceptions=False,
    )
    return result, time.monotonic() - t0


def _exact(out: Path, n: int, frames: int) -> None:
    videos = pd.read_parquet(out / "videos.parquet")
    bad = videos[videos.status != "done"]
    assert bad.empty, bad[["video", "error"]].to_string()
    got = pd.read_parquet(out / "frames")
    assert len(got) == n * frames and not got.duplicated(["video", "frame"]).any()


def test_a_shard_waiting_for_a_busy_detector_does_not_time_out(
    tmp_path: Path, scene: Scene, ffmpeg: str, caffe_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two decoders, one slow detector (each call 0.6 s longer), a 3 s shard limit and no
    retries: a shard whose batches wait several seconds behind the other's is queueing, not
    hung, and must not fail as "no progress"."""
    root = tmp_path / "in"
    _videos(root, scene, ffmpeg, 3, 64)
    monkeypatch.setenv("MASKJOBS_TEST_FAULT", "detector-sleep:0.6")
    result, _ = _run(tmp_path, root, caffe_weights, (
        "detector:\n  batch_size: 8\n"
        "resources:\n  detector_workers: 1\n  decode_cpus: 0.5\n"
        "planning:\n  pack_frames: 0\n  shard_timeout_s: 3\n  max_retries: 0\n  inflight_batches: 2\n"
    ))
    _exact(tmp_path / "o", 3, 64)
    assert result.exit_code == 0, result.output


def test_a_hung_detector_actor_is_replaced_and_its_batches_sent_again(
    tmp_path: Path, scene: Scene, ffmpeg: str, caffe_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One detector actor, and its first call never returns: with no retries allowed the job
    still ends exact, because the pool sees a call in flight past the limit with nothing
    finished, kills the actor, starts another and sends the hung batches to it."""
    root = tmp_path / "in"
    _videos(root, scene, ffmpeg, 2, 48)
    flag = tmp_path / "hung.flag"
    monkeypatch.setenv("MASKJOBS_TEST_FAULT", f"detector-hang:{flag}")
    result, took = _run(tmp_path, root, caffe_weights, (
        "resources:\n  detector_workers: 1\n"
        "planning:\n  pack_frames: 0\n  shard_timeout_s: 5\n  max_retries: 0\n"
    ))
    assert flag.exists(), "the fault did not fire"
    _exact(tmp_path / "o", 2, 48)
    assert result.exit_code == 0, result.output
    assert took < 120
