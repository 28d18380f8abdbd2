"""Probing: each video's time limit runs from when its own probe starts."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from benchmarks.videogen import Scene, write_video
from jobs.cli.main import app


@pytest.mark.slow
def test_probes_queued_behind_others_do_not_time_out(
    tmp_path: Path, scene: Scene, ffmpeg: str, caffe_weights: Path
) -> None:
    """80 healthy files and a 2 s probe limit: two probes run at a time beside the detector,
    so the last ones start well after 2 s, and every one must pass (one deadline for all
    probes failed the late ones as "the decoder hangs")."""
    root = tmp_path / "in"
    root.mkdir()
    first = write_video(root / "v00.mp4", scene, 4, ffmpeg=ffmpeg)
    for i in range(1, 80):
        shutil.copy(first, root / f"v{i:02d}.mp4")
    cfg = tmp_path / "job.yaml"
    cfg.write_text("planning:\n  probe_timeout_s: 2\n")
    result = CliRunner().invoke(
        app, ["run", str(root), "--out", str(tmp_path / "o"), "--weights", str(caffe_weights), "--config", str(cfg)],
        catch_exceptions=False,
    )
    videos = pd.read_parquet(tmp_path / "o" / "videos.parquet")
    failed = videos[videos.status != "done"]
    assert failed.empty, failed[["video", "error"]].to_string()
    assert result.exit_code == 0, result.output
    assert len(videos) == 80 and (videos.frames_processed == 4).all()


@pytest.mark.slow
def test_probes_started_ahead_give_what_probing_the_videos_gives(tmp_path: Path, scene: Scene, ffmpeg: str) -> None:
    """``probe_all`` on the probes ``start_probes`` submitted (as a job does, ahead of its actors)
    and on the videos themselves: the same facts for a good file, the same error for a broken one;
    asked for tags, the same and the good file's creation_time."""
    from jobs.config import RayConfig
    from jobs.inputs import discover
    from jobs.pipeline.probe import probe_all, start_probes
    from jobs.pipeline.session import ray_session

    write_video(tmp_path / "plain.mp4", scene, 6, ffmpeg=ffmpeg)
    subprocess.run([ffmpeg, "-v", "error", "-i", str(tmp_path / "plain.mp4"), "-c", "copy", "-metadata",
                    "creation_time=2026-03-15T09:30:00Z", str(tmp_path / "good.mp4")], check=True)
    (tmp_path / "plain.mp4").unlink()
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    videos = discover([str(tmp_path)], exclude=[])
    with ray_session(RayConfig(num_cpus=2, object_store_mb=100)) as ray:
        ahead = probe_all(ray, start_probes(ray, videos), 30)
        direct = probe_all(ray, videos, 30)
        tagged = probe_all(ray, start_probes(ray, videos, tags={v.video for v in videos}), 30)
    assert ahead == direct
    infos, errors, created = ahead
    assert [info.frames_total for info in infos.values()] == [6] and len(errors) == 1
    assert "broken" in next(iter(errors)) and next(iter(errors.values()))
    assert created == {next(iter(infos)): None}  # asked for no tags
    assert tagged.infos == infos and tagged.errors == errors
    assert tagged.created == {next(iter(infos)): datetime(2026, 3, 15, 9, 30, tzinfo=timezone.utc)}
