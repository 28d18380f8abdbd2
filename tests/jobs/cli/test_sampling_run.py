"""``maskjobs run --keyframes`` and sampled runs sized from their work, on a real local Ray."""

from __future__ import annotations

import json
from pathlib import Path

import decord
import pandas as pd
import pytest
from typer.testing import CliRunner

from jobs.cli.main import app
from tests.jobs.conftest import VideoSet

pytestmark = pytest.mark.slow  # runs `maskjobs run` on real videos and a real local Ray


def _run(*args: str):
    return CliRunner().invoke(app, ["run", *args], catch_exceptions=False)


def _rows(out: Path) -> dict[int, list[tuple]]:
    frames = pd.read_parquet(out / "frames")
    return {
        int(r.frame): sorted((d["label"], round(d["score"], 5), round(d["x1"], 2), round(d["y1"], 2)) for d in r.detections)
        for r in frames.itertuples()
    }


def test_keyframes_analyses_only_keyframes_and_reports_the_sampling_rate(
    video_set: VideoSet, caffe_weights: Path, tmp_path: Path
) -> None:
    """long.mp4 has 400 frames at 25 fps with a keyframe every 40: ``--keyframes`` analyses
    exactly those 10 frames, with the same detections as ``--stride 40`` (the same frames
    read the other way), and reports 10 frames in 16 s: 0.625 a second."""
    clip = video_set.root / "long.mp4"
    keys = [int(k) for k in decord.VideoReader(str(clip)).get_key_indices()]
    assert keys == list(range(0, 400, 40))
    out = tmp_path / "keys"
    result = _run(str(clip), "--out", str(out), "--weights", str(caffe_weights), "--keyframes")
    assert result.exit_code == 0, result.output
    got = _rows(out)
    assert sorted(got) == keys
    videos = pd.read_parquet(out / "videos.parquet")
    assert videos.loc[0, "frames_processed"] == 10
    assert videos.loc[0, "sampling_rate"] == pytest.approx(10 / 16.0, rel=1e-3)
    assert "0.62" in result.stdout  # the summary's "per s" column
    job = json.loads((out / "job.json").read_text())
    assert job["config"]["sampling"]["keyframes"] is True
    assert job["sizing"]["costs_ms"]["decode"] > 0 and job["sizing"]["costs_ms"]["detect"] > 0

    strided = tmp_path / "stride"
    result = _run(str(clip), "--out", str(strided), "--weights", str(caffe_weights), "--stride", "40")
    assert result.exit_code == 0, result.output
    assert _rows(strided) == got
    rate = pd.read_parquet(strided / "videos.parquet").loc[0, "sampling_rate"]
    assert rate == pytest.approx(10 / 16.0, rel=1e-3)


def test_keyframes_with_a_stride_is_refused(video_set: VideoSet, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", str(video_set.root / "long.mp4"), "--out", str(tmp_path / "o"),
                                      "--keyframes", "--stride", "3"])
    assert result.exit_code == 2
    assert "keyframes takes no stride or fps" in result.stderr and result.stderr.count("\n") == 1


def test_sampled_long_video_is_cut_by_what_it_decodes_and_measured(
    video_set: VideoSet, caffe_weights: Path, tmp_path: Path
) -> None:
    """At every 8th frame with ``shard_frames: 32`` long.mp4's 50 samples would be one shard;
    cut by the 64 source frames each may decode, several shards decode it (each frame once),
    and job.json records the costs the job measured and the decoders it ran."""
    cfg = tmp_path / "job.yaml"
    cfg.write_text("planning:\n  shard_frames: 32\n  pack_frames: 16\n")
    out = tmp_path / "o"
    result = _run(str(video_set.root / "long.mp4"), "--out", str(out), "--weights", str(caffe_weights),
                  "--config", str(cfg), "--stride", "8")
    assert result.exit_code == 0, result.output
    frames = pd.read_parquet(out / "frames")
    assert sorted(frames["frame"]) == list(range(0, 400, 8))
    assert len(list((out / "frames").glob("*.parquet"))) >= 4
    job = json.loads((out / "job.json").read_text())
    sizing = job["sizing"]
    assert sizing["costs_ms"]["measured_frames"] == 50
    assert sizing["decoders"] >= 1 and 0 < sizing["decode_cpus"] <= 1
