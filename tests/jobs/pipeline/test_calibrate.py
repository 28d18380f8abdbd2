"""Choosing and reading the int8 calibration frames (``jobs.pipeline.calibrate``)."""

from __future__ import annotations

import numpy as np
import pytest

from detector.preprocess import resize_rgb
from jobs.pipeline.calibrate import pick_calibration, read_calibration
from jobs.pipeline.probe import probe_video
from jobs.video import VideoInfo
from tests.jobs.conftest import VideoSet


def _info(frames: int, keyframes: tuple[int, ...]) -> VideoInfo:
    return VideoInfo(frames, 25.0, frames / 25.0, 640, 360, "h264", keyframes)


def test_spread_over_videos_and_snapped_to_keyframes() -> None:
    probed = [(f"v{i}", f"/v{i}.mp4", _info(1000, tuple(range(0, 1000, 50)))) for i in range(20)]
    picks = pick_calibration(probed, 32)
    assert [p[0] for p in picks] == ["v0", "v2", "v5", "v7", "v10", "v12", "v15", "v17"]  # 8, evenly
    assert [len(p[2]) for p in picks] == [4] * 8
    for _, _, frames in picks:
        assert all(f % 50 == 0 for f in frames) and frames == sorted(set(frames))
        assert frames[0] > 0 and frames[-1] < 1000  # spread over the video, not its first GOP
    assert pick_calibration(probed, 32) == picks  # deterministic


def test_few_keyframes_take_evenly_spaced_frames_and_shares_add_up() -> None:
    probed = [("a", "/a.mp4", _info(60, (0,))), ("b", "/b.mp4", _info(300, (0, 100, 200)))]
    picks = dict((v, f) for v, _, f in pick_calibration(probed, 7))
    assert len(picks["a"]) == 4 and len(set(picks["a"])) == 4 and max(picks["a"]) < 60
    assert picks["b"] == [0, 100, 200]  # 3 distinct keyframes for a share of 3
    assert pick_calibration([], 32) == [] and pick_calibration(probed, 0) == []


@pytest.mark.slow  # decodes the generated videos
def test_read_calibration_matches_decoding(video_set: VideoSet) -> None:
    import decord

    path = str(video_set.root / "long.mp4")
    info = probe_video(path)
    (_, _, frames), = pick_calibration([("long.mp4", path, info)], 5)
    got = read_calibration(path, frames, input_size=260)
    reader = decord.VideoReader(path, ctx=decord.cpu(0))
    want = np.stack([resize_rgb(reader[f].asnumpy(), 260) for f in frames])
    assert got.shape == (5, 260, 260, 3) and np.array_equal(got, want)


@pytest.mark.slow  # needs the generated video set
@pytest.mark.parametrize("name", ["truncated.mp4", "notes.mkv"])
def test_an_unreadable_video_gives_no_frames(video_set: VideoSet, name: str) -> None:
    got = read_calibration(str(video_set.root / name), [0, 10], input_size=260)
    assert got.shape == (0, 260, 260, 3)


@pytest.mark.slow  # runs `maskjobs run --int8` on a real local Ray
def test_a_calibration_read_that_hangs_or_crashes_is_skipped(
    tmp_path, scene, ffmpeg: str, caffe_weights, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of three videos picked for int8 calibration, one's read hangs and one's crashes its
    worker: calibration goes on with the third within its time limit, every video is
    processed in int8, and job.json lists the frames actually used."""
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from benchmarks.videogen import write_video
    from jobs.cli.main import app

    root = tmp_path / "in"
    root.mkdir()
    for i, name in enumerate(("good.mp4", "hangs.mp4", "crashes.mp4")):
        write_video(root / name, scene, 30, ffmpeg=ffmpeg, first=i * 5, gop=10)
    monkeypatch.setenv("MASKJOBS_TEST_FAULT", "calib-hang:hangs.mp4,calib-crash:crashes.mp4")
    cfg = tmp_path / "job.yaml"
    cfg.write_text("planning:\n  probe_timeout_s: 5\n  shard_timeout_s: 20\n  max_retries: 0\n")
    out = tmp_path / "o"
    result = CliRunner().invoke(
        app, ["run", str(root), "--out", str(out), "--weights", str(caffe_weights), "--config", str(cfg), "--int8"],
        catch_exceptions=False,
    )
    videos = pd.read_parquet(out / "videos.parquet")
    bad = videos[videos.status != "done"]
    assert bad.empty, bad[["video", "error"]].to_string()
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(out / "frames")) == 90
    job = json.loads((out / "job.json").read_text())
    assert [c["video"] for c in job["int8_calibration"]] == ["good.mp4"]
    assert job["detector_backend"] == "int8" and sum(job["int8_frames"].values()) == 90
