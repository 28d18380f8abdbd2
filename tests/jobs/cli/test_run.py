"""``maskjobs run`` on a real local Ray, real videos and real Parquet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from jobs.cli.main import app
from jobs.pipeline.watchdog import descendants, stat
from sinks.schema import FRAMES_SCHEMA, VIDEOS_SCHEMA
from tests.jobs.conftest import VideoSet

pytestmark = pytest.mark.slow  # every test runs `maskjobs run` on real videos and a real local Ray

SMALL_SHARDS = "planning:\n  shard_frames: 96\n  pack_frames: 60\n"


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def _config(tmp_path: Path, text: str = SMALL_SHARDS) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def _run(runner: CliRunner, *args: str):
    return runner.invoke(app, ["run", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def full_run(runner: CliRunner, video_set: VideoSet, caffe_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out") / "job"
    cfg = _config(tmp_path_factory.mktemp("cfg"))
    result = _run(runner, str(video_set.root), "--out", str(out), "--weights", str(caffe_weights), "--config", str(cfg))
    return out, result


def test_run_processes_every_good_video_and_reports_the_broken(full_run, video_set: VideoSet) -> None:
    out, result = full_run
    assert result.exit_code == 1, result.output
    videos = pd.read_parquet(out / "videos.parquet")
    assert set(videos["video"]) == set(video_set.good) | set(video_set.broken)
    by_id = videos.set_index("video")
    for vid, n in video_set.good.items():
        row = by_id.loc[vid]
        assert row["status"] == "done" and pd.isna(row["error"])
        assert row["frames_total"] == n and row["frames_processed"] == n
        assert row["width"] == 480 and row["height"] == 272
        assert row["faces"] == row["masked"] + row["unmasked"] > 0
    for vid, cause in video_set.broken.items():
        row = by_id.loc[vid]
        assert row["status"] == "failed" and cause in row["error"]
        assert row["frames_processed"] == 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(video_set.broken)
    for vid in video_set.broken:
        assert sum(str(video_set.root / vid) in line for line in errors) == 1
    assert "Traceback" not in result.output


def test_frames_dataset_schema_and_exactly_once(full_run, video_set: VideoSet) -> None:
    out, _ = full_run
    parts = sorted((out / "frames").glob("*.parquet"))
    assert len(parts) >= 5  # the long video was split into several shards
    assert pq.read_schema(parts[0]).remove_metadata() == FRAMES_SCHEMA
    assert pq.read_schema(out / "videos.parquet").remove_metadata() == VIDEOS_SCHEMA
    frames = pd.read_parquet(out / "frames")
    assert not frames.duplicated(["video", "frame"]).any()
    for vid, n in video_set.good.items():
        got = np.sort(frames.loc[frames["video"] == vid, "frame"].to_numpy())
        np.testing.assert_array_equal(got, np.arange(n))
    assert frames["faces"].eq(frames["detections"].map(len)).all()
    with_faces = frames[frames["faces"] > 0]
    np.testing.assert_allclose(with_faces["compliance"], with_faces["masked"] / with_faces["faces"], rtol=1e-6)
    assert frames.loc[frames["faces"] == 0, "compliance"].isna().all()
    long = frames[frames["video"] == "long.mp4"].sort_values("frame")
    np.testing.assert_allclose(long["time_s"].to_numpy(), np.arange(400) / 25.0, atol=1e-3)
    # Most frames show both people: one masked, one not.
    both = (long["masked"] == 1) & (long["unmasked"] == 1)
    assert both.mean() > 0.85
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "failed" and len(job["weights"]["sha256"]) == 64
    assert job["config"]["planning"]["shard_frames"] == 96 and job["finished"]


def test_detections_equal_maskjobs_detect(full_run, video_set: VideoSet, runner: CliRunner, caffe_weights: Path) -> None:
    out, _ = full_run
    frames = pd.read_parquet(out / "frames").set_index(["video", "frame"]).sort_index()
    for vid in ("cams/north/hevc.mkv", "mjpeg.mov"):
        result = runner.invoke(app, ["detect", str(video_set.root / vid), "--weights", str(caffe_weights), "--json"])
        assert result.exit_code == 0
        for item in json.loads(result.stdout):
            row = frames.loc[(vid, item["frame"])]
            got = sorted(row["detections"], key=lambda d: -d["score"])
            want = item["detections"]
            assert [d["label"] for d in got] == [d["label"] for d in want]
            for g, w in zip(got, want):
                assert g["score"] == pytest.approx(w["score"], abs=1e-5)
                for k in ("x1", "y1", "x2", "y2"):
                    assert g[k] == pytest.approx(w[k], abs=1e-3)


def test_rerun_processes_nothing_new(full_run, runner: CliRunner, video_set: VideoSet, caffe_weights: Path, tmp_path: Path) -> None:
    out, _ = full_run
    before = sorted(p.name for p in (out / "frames").glob("*.parquet"))
    result = _run(runner, str(video_set.root), "--out", str(out), "--weights", str(caffe_weights), "--config", str(_config(tmp_path)))
    assert result.exit_code == 1
    assert "nothing left to process" in result.stdout
    assert sorted(p.name for p in (out / "frames").glob("*.parquet")) == before


def test_a_different_config_is_refused_unless_overwrite(
    full_run, runner: CliRunner, video_set: VideoSet, caffe_weights: Path
) -> None:
    out, _ = full_run
    result = _run(runner, str(video_set.root / "mjpeg.mov"), "--out", str(out), "--weights", str(caffe_weights), "--stride", "2")
    assert result.exit_code == 2
    assert "different config" in result.stderr and result.stderr.count("\n") == 1


def test_stride_and_fps_sampling(runner: CliRunner, video_set: VideoSet, caffe_weights: Path, tmp_path: Path) -> None:
    clip = str(video_set.root / "mpeg4.avi")  # 30 frames at 30 fps
    out = tmp_path / "o"
    result = _run(runner, clip, "--out", str(out), "--weights", str(caffe_weights), "--stride", "4")
    assert result.exit_code == 0, result.output
    frames = pd.read_parquet(out / "frames")
    assert sorted(frames["frame"]) == list(range(0, 30, 4))
    assert set(frames["video"]) == {"mpeg4.avi"}  # a file given directly is named by its file name
    result = _run(runner, clip, "--out", str(out), "--weights", str(caffe_weights), "--fps", "10", "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(pd.read_parquet(out / "frames")["frame"]) == list(range(0, 30, 3))
    videos = pd.read_parquet(out / "videos.parquet")
    assert videos.loc[0, "frames_processed"] == 10 and videos.loc[0, "frames_total"] == 30


@pytest.mark.parametrize(
    "yaml_text,message",
    [
        ("sampling:\n  stride: 0\n", "sampling.stride must be >= 1"),
        ("detector:\n  score_threshold: 2\n", "score_threshold must be in [0, 1]"),
        ("sampling:\n  strid: 2\n", "unknown key sampling.strid"),
        ("detector: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_config_is_one_line_exit_2(runner: CliRunner, video_set: VideoSet, tmp_path: Path, yaml_text: str, message: str) -> None:
    result = runner.invoke(app, ["run", str(video_set.root), "--out", str(tmp_path / "o"), "--config", str(_config(tmp_path, yaml_text))])
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_annotate_needs_a_file_system_output(runner: CliRunner, video_set: VideoSet, caffe_weights: Path, tmp_path: Path) -> None:
    """ffmpeg writes the annotated videos, so a URI output is refused before anything is written."""
    out = tmp_path / "o"
    result = _run(runner, str(video_set.root / "mjpeg.mov"), "--out", f"mock://{out}", "--weights", str(caffe_weights),
                  "--annotate")
    assert result.exit_code == 2
    assert "--annotate writes videos" in result.stderr and result.stderr.count("\n") == 1
    assert not out.exists()


def test_crash_and_hang_are_isolated(
    runner: CliRunner, video_set: VideoSet, caffe_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ffmpeg: str, scene
) -> None:
    """A decoder that crashes (every attempt) or hangs, and a file whose probe hangs (a FIFO),
    fail their own videos; the others complete."""
    from benchmarks.videogen import write_video

    root = tmp_path / "in"
    root.mkdir()
    for name in ("ok.mp4", "crashes.mp4", "hangs.mp4"):
        write_video(root / name, scene, 24, ffmpeg=ffmpeg)
    os.mkfifo(root / "fifo.mp4")  # opening it blocks forever: the probe hangs
    monkeypatch.setenv("MASKJOBS_TEST_FAULT", "crash:crashes.mp4,hang:hangs.mp4")
    cfg = _config(tmp_path, "planning:\n  pack_frames: 0\n  max_retries: 1\n  shard_timeout_s: 4\n  probe_timeout_s: 8\n")
    t0 = time.monotonic()
    result = _run(runner, str(root), "--out", str(tmp_path / "o"), "--weights", str(caffe_weights), "--config", str(cfg))
    assert time.monotonic() - t0 < 120
    assert result.exit_code == 1, result.output
    videos = pd.read_parquet(tmp_path / "o" / "videos.parquet").set_index("video")
    assert videos.loc["ok.mp4", "status"] == "done" and videos.loc["ok.mp4", "frames_processed"] == 24
    assert videos.loc["crashes.mp4", "status"] == "failed"
    assert videos.loc["hangs.mp4", "status"] == "failed" and "no progress" in videos.loc["hangs.mp4", "error"]
    assert videos.loc["fifo.mp4", "status"] == "failed" and "timed out" in videos.loc["fifo.mp4", "error"]
    frames = pd.read_parquet(tmp_path / "o" / "frames")
    assert set(frames["video"]) == {"ok.mp4"} and len(frames) == 24


def test_a_driver_error_on_one_shard_fails_only_its_video(
    runner: CliRunner, caffe_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ffmpeg: str, scene
) -> None:
    """An exception while the driver tabulates one shard's detections (a bug met on one
    video's data) fails that video with a one-line cause; the others are committed."""
    import jobs.pipeline.commit
    from benchmarks.videogen import write_video

    root = tmp_path / "in"
    root.mkdir()
    for name in ("ok.mp4", "trips.mp4"):
        write_video(root / name, scene, 24, ffmpeg=ffmpeg)
    real = jobs.pipeline.commit.frames_table

    def tripping(videos, *args, **kwargs):
        if "trips.mp4" in set(videos.tolist()):
            raise IndexError("index 24 is out of bounds for axis 0 with size 24")
        return real(videos, *args, **kwargs)

    monkeypatch.setattr(jobs.pipeline.commit, "frames_table", tripping)
    cfg = _config(tmp_path, "planning:\n  pack_frames: 0\n  max_retries: 0\n")
    result = _run(runner, str(root), "--out", str(tmp_path / "o"), "--weights", str(caffe_weights), "--config", str(cfg))
    assert result.exit_code == 1, result.output
    videos = pd.read_parquet(tmp_path / "o" / "videos.parquet").set_index("video")
    assert videos.loc["ok.mp4", "status"] == "done" and videos.loc["ok.mp4", "frames_processed"] == 24
    error = videos.loc["trips.mp4", "error"]
    assert videos.loc["trips.mp4", "status"] == "failed" and "index 24 is out of bounds" in error and "\n" not in error
    frames = pd.read_parquet(tmp_path / "o" / "frames")
    assert set(frames["video"]) == {"ok.mp4"} and len(frames) == 24


def _alive(procs: dict[int, int]) -> set[int]:
    """The processes of ``{pid: start_time}`` still running (a reused pid is not counted)."""
    return {pid for pid, start in procs.items() if (stat(pid) or (0, -1))[1] == start}


def _run_watching(cmd: list[str], *, until: Callable[[], bool] | None = None, timeout: float = 300) -> tuple[int, dict[int, int]]:
    """Runs ``cmd``, recording every process it starts (Ray's included); SIGKILLs it once
    ``until()`` holds. Returns its exit code and ``{pid: start_time}`` of what it started."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        seen.update(descendants(proc.pid))
        if until is not None and until():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.1)
    else:
        if proc.poll() is None:
            proc.kill()
    code = proc.wait()
    assert seen, "the command started no process"
    if code not in (0, -signal.SIGKILL):
        raise AssertionError(proc.stderr.read() if proc.stderr else code)
    return code, seen


def _gone(procs: dict[int, int], timeout: float = 30) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(procs):
        time.sleep(0.5)
    return _alive(procs)


def test_resume_after_sigkill(video_set: VideoSet, caffe_weights: Path, tmp_path: Path) -> None:
    """Kill the driver mid-run: no Ray process survives it, and the rerun ends with every
    frame exactly once."""
    out = tmp_path / "o"
    cfg = _config(tmp_path, "planning:\n  shard_frames: 40\n  pack_frames: 0\n")
    cmd = [sys.executable, "-c", "from jobs.cli.main import app; app()", "run", str(video_set.root / "long.mp4"),
           "--out", str(out), "--weights", str(caffe_weights), "--config", str(cfg)]

    def mid_run() -> bool:
        return len(list((out / "frames").glob("part-*.parquet"))) >= 2

    code, started = _run_watching(cmd, until=mid_run, timeout=120)
    assert code == -signal.SIGKILL, "the job should be killed mid-run"
    parts = list((out / "frames").glob("part-*.parquet"))
    assert 2 <= len(parts) < 10, "the job should be killed mid-run"
    assert not _gone(started), "Ray processes outlived the killed driver"

    code, started = _run_watching(cmd)
    assert code == 0
    frames = pd.read_parquet(out / "frames")
    assert len(frames) == 400 and not frames.duplicated(["video", "frame"]).any()
    assert sorted(frames["frame"]) == list(range(400))
    assert not list((out / "frames").glob(".*.part"))  # nothing left aside
    assert not _gone(started), "Ray processes outlived the command"


def test_int8_run_finds_the_same_faces_as_float32(
    full_run, runner: CliRunner, video_set: VideoSet, caffe_weights: Path, tmp_path: Path
) -> None:
    """``--int8``: calibrated on keyframes of the good videos (the broken ones fail their
    probe and are left out), every good frame processed, the same faces as float32 on at
    least 99 % of frames, and job.json says what was used."""
    from detector.compare import same_faces
    from detector.detections import Detections

    fp32_out, _ = full_run
    out = tmp_path / "int8"
    result = _run(runner, str(video_set.root), "--out", str(out), "--weights", str(caffe_weights),
                  "--config", str(_config(tmp_path)), "--int8")
    assert result.exit_code == 1, result.output  # the broken videos, as in float32
    job = json.loads((out / "job.json").read_text())
    assert job["detector_backend"] == "int8"
    assert job["config"]["detector"]["int8"] is True
    picked = {c["video"] for c in job["int8_calibration"]}
    assert picked and picked <= set(video_set.good)
    assert sum(len(c["frames"]) for c in job["int8_calibration"]) == 32
    counts = job["int8_frames"]  # fragile frames ran again in float32
    assert counts["int8"] + counts["float32"] == sum(video_set.good.values()) and counts["int8"] > counts["float32"]

    def as_detections(dets) -> Detections:
        names = ("Mask", "NoMask")
        return Detections(
            np.array([[d["x1"], d["y1"], d["x2"], d["y2"]] for d in dets], np.float32).reshape(-1, 4),
            np.array([d["score"] for d in dets], np.float32),
            np.array([names.index(d["label"]) for d in dets], np.int64),
        )

    want = pd.read_parquet(fp32_out / "frames").set_index(["video", "frame"]).sort_index()
    got = pd.read_parquet(out / "frames").set_index(["video", "frame"]).sort_index()
    assert list(got.index) == list(want.index)
    alike = sum(
        same_faces(as_detections(w), as_detections(g)) for w, g in zip(want["detections"], got["detections"])
    )
    assert alike >= 0.995 * len(want), f"same faces on {alike}/{len(want)} frames"
    # a different precision is a different result: resuming the float32 output is refused
    again = _run(runner, str(video_set.root / "mjpeg.mov"), "--out", str(fp32_out), "--weights", str(caffe_weights),
                 "--config", str(_config(tmp_path)), "--int8")
    assert again.exit_code == 2 and "different config" in again.stderr
