"""``maskjobs submit / status / logs / stop / jobs`` against a real Ray head (``ray start --head``
on 127.0.0.1, token auth), through the Jobs API, on real videos and real Parquet."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import Result
from typer.testing import CliRunner

from jobs.cli.main import app
from tests.conftest import S3Server
from tests.jobs.conftest import VideoSet
from tests.rayhead import RayHead

pytestmark = pytest.mark.slow  # a real Ray head and real videos

SMALL_SHARDS = "planning:\n  shard_frames: 96\n  pack_frames: 60\n"
MANY_SHARDS = "planning:\n  shard_frames: 40\n  pack_frames: 0\n"

Cli = Callable[..., Result]


@pytest.fixture(scope="module")
def head() -> Iterator[RayHead]:
    """One head for the module (starting one takes seconds); stopped with all it started."""
    # the nodes' own S3 credentials (moto accepts any): a URI with credentials in it is refused by submit
    h = RayHead(num_cpus=2, env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}).start()
    try:
        yield h
    finally:
        h.stop()
    assert not h.pids(), "processes of the test's Ray head outlived it"


@pytest.fixture
def cli(head: RayHead, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Runs ``maskjobs ...`` in-process against the head, with its token in $RAY_AUTH_TOKEN."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(app, [*args], catch_exceptions=False)

    return invoke


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return str(path)


def _job_id(result: Result) -> str:
    job_id = result.stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_"), result.output
    return job_id


def _parts(out: Path) -> list[Path]:
    return sorted((out / "frames").glob("part-*.parquet"))


def _wait_for_parts(out: Path, n: int, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(_parts(out)) < n:
        time.sleep(0.2)
    return len(_parts(out))


def _assert_every_frame_once(out: Path, video: str, n: int) -> None:
    frames = pd.read_parquet(out / "frames")
    assert not frames.duplicated(["video", "frame"]).any()
    np.testing.assert_array_equal(np.sort(frames.loc[frames["video"] == video, "frame"].to_numpy()), np.arange(n))
    assert not list((out / "frames").glob(".*.part"))  # nothing left aside


def test_submit_wait_reads_complete_output(
    cli: Cli, head: RayHead, video_set: VideoSet, caffe_weights: Path, tmp_path: Path
) -> None:
    """Submit through the Jobs API to a file:// URI output, wait, read every row; then status,
    logs and the job list on that finished job."""
    out = tmp_path / "out"
    result = cli(
        "submit", str(video_set.root), "--out", out.as_uri(), "--address", head.dashboard_url,
        "--weights", str(caffe_weights), "--config", _config(tmp_path, SMALL_SHARDS), "--wait",
    )
    job_id = _job_id(result)
    assert result.exit_code == 1, result.output  # the broken videos failed; all others done
    assert "FAILED, exit code 1" in result.stderr
    videos = pd.read_parquet(out / "videos.parquet").set_index("video")
    assert set(videos.index) == set(video_set.good) | set(video_set.broken)
    for vid, n in video_set.good.items():
        assert videos.loc[vid, "status"] == "done" and videos.loc[vid, "frames_processed"] == n
        _assert_every_frame_once(out, vid, n)
    for vid in video_set.broken:
        assert videos.loc[vid, "status"] == "failed"
    frames = pd.read_parquet(out / "frames")
    assert len(frames) == sum(video_set.good.values())
    job = json.loads((out / "job.json").read_text())
    assert job["config"]["planning"]["shard_frames"] == 96  # the config resolved at submit time
    assert job["config"]["ray"]["address"] == "auto" and len(job["weights"]["sha256"]) == 64
    summary = f"maskjobs run: {len(video_set.good) + len(video_set.broken)} videos"
    assert summary in result.stdout  # the job's logs were followed

    status = cli("status", job_id, "--address", head.dashboard_url)
    assert status.exit_code == 0
    assert "FAILED" in status.stdout and "exit code:  1" in status.stdout and str(out) in status.stdout
    logs = cli("logs", job_id, "--address", head.dashboard_url)
    assert logs.exit_code == 0 and summary in logs.stdout
    listed = cli("jobs", "--address", head.dashboard_url)
    assert listed.exit_code == 0 and any(line.startswith(job_id) for line in listed.stdout.splitlines())


def _rows_without_tracks(path: Path) -> list[tuple]:
    """A shard file's rows, detections without their track ids (the tracking pass fills those in)."""
    table = pq.read_table(path).to_pylist()
    return [
        (r["video"], r["frame"], r["time_s"], r["faces"],
         tuple(tuple(v for k, v in d.items() if k != "track") for d in r["detections"]))
        for r in table
    ]


def test_stop_then_submit_again_resumes(
    cli: Cli, head: RayHead, video_set: VideoSet, caffe_weights: Path, tmp_path: Path
) -> None:
    """Stopping a running job loses its driver; submitting it again commits only what is left."""
    out = tmp_path / "out"
    args = ("submit", str(video_set.root / "long.mp4"), "--out", str(out), "--address", head.dashboard_url,
            "--weights", str(caffe_weights), "--config", _config(tmp_path, MANY_SHARDS))
    result = cli(*args)
    assert result.exit_code == 0, result.output
    job_id = _job_id(result)
    assert 2 <= _wait_for_parts(out, 2) < 10, "the job should be stopped mid-run"
    running = cli("status", job_id, "--address", head.dashboard_url)
    assert "RUNNING" in running.stdout

    stopped = cli("stop", job_id, "--address", head.dashboard_url)
    assert stopped.exit_code == 0, stopped.output
    assert "STOPPED" in stopped.stdout
    assert "STOPPED" in cli("status", job_id, "--address", head.dashboard_url).stdout
    kept = {p.name: _rows_without_tracks(p) for p in _parts(out)}
    assert 2 <= len(kept) < 10

    again = cli(*args, "--wait")
    assert again.exit_code == 0, again.output
    assert _job_id(again) != job_id
    _assert_every_frame_once(out, "long.mp4", 400)
    for name, rows in kept.items():  # committed before the stop: kept, not redone (track ids may be added)
        assert _rows_without_tracks(out / "frames" / name) == rows
    assert json.loads((out / "job.json").read_text())["status"] == "done"


def test_a_killed_worker_does_not_lose_or_double_a_frame(
    cli: Cli, head: RayHead, video_set: VideoSet, caffe_weights: Path, tmp_path: Path
) -> None:
    """SIGKILL the detector actor, then a decode worker, while the job runs: it still ends done
    with every frame exactly once."""
    out = tmp_path / "out"
    result = cli(
        "submit", str(video_set.root / "long.mp4"), "--out", str(out), "--address", head.dashboard_url,
        "--weights", str(caffe_weights), "--config", _config(tmp_path, MANY_SHARDS),
    )
    assert result.exit_code == 0, result.output
    job_id = _job_id(result)

    killed = []
    for title, after_parts in (("DetectorActor", 1), ("decode_shard", 3)):
        assert _wait_for_parts(out, after_parts) < 10, "the job ended before the kill"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (pids := head.worker_pids(title)):
            time.sleep(0.1)
        assert pids, f"no ray::{title} process to kill: {head.worker_pids('')}"
        os.kill(pids[0], signal.SIGKILL)
        killed.append(title)
    assert len(_parts(out)) < 10, "the job should still have been running after the kills"

    info = cli("logs", job_id, "--address", head.dashboard_url, "--follow")
    assert info.exit_code == 0
    assert re.search(r"detector actor \d+ died; starting a replacement", info.stdout), info.stdout[-2000:]
    status = cli("status", job_id, "--address", head.dashboard_url)
    assert "SUCCEEDED" in status.stdout, status.stdout + info.stdout
    _assert_every_frame_once(out, "long.mp4", 400)
    videos = pd.read_parquet(out / "videos.parquet")
    assert videos.loc[0, "status"] == "done" and videos.loc[0, "frames_processed"] == 400


def test_code_and_weights_on_the_cluster_output_to_s3(
    cli: Cli, head: RayHead, video_set: VideoSet, caffe_weights: Path, s3_server: S3Server
) -> None:
    """--no-ship-code runs the cluster's own `maskjobs run`; --no-ship-weights reads a path the head
    sees; the output goes to an s3:// URI (an S3 endpoint on 127.0.0.1)."""
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    result = cli(
        "submit", str(video_set.root / "mjpeg.mov"), "--out", s3_server.env_uri("cluster/job"),
        "--address", head.dashboard_url, "--weights", str(caffe_weights), "--no-ship-code", "--no-ship-weights",
        "--wait",
    )
    assert result.exit_code == 0, result.output
    job_id = _job_id(result)
    assert f"Running entrypoint for job {job_id}: maskjobs run " in result.stdout
    fs, root = pafs.FileSystem.from_uri(s3_server.uri("cluster/job"))
    frames = ds.dataset(f"{root}/frames", filesystem=fs, format="parquet").to_table().to_pandas()
    assert sorted(frames["frame"]) == list(range(20)) and set(frames["video"]) == {"mjpeg.mov"}
    with fs.open_input_stream(f"{root}/job.json") as f:
        job = json.loads(f.read())
    assert job["status"] == "done" and job["weights"]["path"] == str(caffe_weights)
    status = cli("status", job_id, "--address", head.dashboard_url).stdout
    assert "out:        s3://maskjobs/cluster/job\n" in status  # recorded without its credentials


def test_inputs_the_workers_cannot_see_fail_at_submit(
    cli: Cli, head: RayHead, video_set: VideoSet, caffe_weights: Path, tmp_path: Path
) -> None:
    before = cli("jobs", "--address", head.dashboard_url).stdout.count("raysubmit_")
    for missing, message in (
        (tmp_path / "nope.mp4", "not found on this machine"),
        ("s3://key:secret@b/v.mp4", "s3://b/v.mp4: credentials in a URI would travel in the job's entrypoint"),
    ):
        result = cli("submit", str(missing), "--out", str(tmp_path / "o"), "--address", head.dashboard_url,
                     "--weights", str(caffe_weights))
        assert result.exit_code == 2
        assert message in result.stderr and result.stderr.count("\n") == 1
    assert cli("jobs", "--address", head.dashboard_url).stdout.count("raysubmit_") == before


def test_a_name_that_is_not_utf8_is_refused_at_submit_and_its_folder_runs(
    cli: Cli, head: RayHead, video_set: VideoSet, caffe_weights: Path, tmp_path: Path
) -> None:
    """Given by name, it was submitted, and the head's job supervisor failed the job
    (``FAILED, UnicodeEncodeError: 'utf-8' codec can't encode character '\\udce9'``): the
    entrypoint must be UTF-8. Now one line at submit says so; the folder that holds it runs,
    and the job finds the file there by its real name."""
    import shutil

    folder = tmp_path / "nas"
    folder.mkdir()
    latin1 = os.fsdecode(os.path.join(os.fsencode(folder), b"caf\xe9.mp4"))
    shutil.copyfile(video_set.root / "leaves.mp4", latin1)
    out = tmp_path / "out"
    result = cli("submit", latin1, "--out", str(out), "--address", head.dashboard_url, "--weights", str(caffe_weights))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert f"{folder}/caf\\xe9.mp4: a path that is not UTF-8 cannot travel" in result.stderr
    result = cli("submit", str(folder), "--out", str(out), "--address", head.dashboard_url,
                 "--weights", str(caffe_weights), "--wait")
    assert result.exit_code == 0, result.output
    videos = pd.read_parquet(out / "videos.parquet").set_index("video")
    assert videos.frames_processed.to_dict() == {"caf\\xe9.mp4": video_set.good["leaves.mp4"]}


def test_token_from_the_default_file_and_a_missing_token(
    cli: Cli, head: RayHead, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("HOME", str(tmp_path))
    result = cli("jobs", "--address", head.dashboard_url)
    assert result.exit_code == 2
    assert "requires a token: set RAY_AUTH_TOKEN" in result.stderr and result.stderr.count("\n") == 1

    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("0" * 64 + "\n")
    result = cli("jobs", "--address", head.dashboard_url)
    assert result.exit_code == 2 and "refused the token from" in result.stderr and result.stderr.count("\n") == 1

    (tmp_path / ".ray" / "auth_token").write_text(head.token + "\n")
    monkeypatch.setenv("RAY_ADDRESS", head.dashboard_url)  # the default --address
    assert cli("jobs").exit_code == 0


def test_unreachable_cluster_and_unknown_job_are_one_line(cli: Cli, head: RayHead) -> None:
    from tests.rayhead import _free_ports

    closed = f"http://127.0.0.1:{_free_ports(1)[0]}"
    result = cli("jobs", "--address", closed)
    assert result.exit_code == 2 and "cannot reach the Ray Jobs API" in result.stderr
    assert result.stderr.count("\n") == 1
    result = cli("status", "raysubmit_doesnotexist", "--address", head.dashboard_url)
    assert result.exit_code == 2 and "no job raysubmit_doesnotexist" in result.stderr
    assert result.stderr.count("\n") == 1


def test_the_submission_carries_the_resolved_config_weights_and_code(
    video_set: VideoSet, caffe_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What goes to the Jobs API, without a cluster: the entrypoint, and a working_dir from
    which `maskjobs run` resolves exactly the submitted config."""
    import shlex

    from jobs.cluster.submit import CONFIG_NAME, staged_submission
    from jobs.config import resolve_config
    from jobs.errors import InputError

    monkeypatch.chdir(video_set.root)
    overrides = {"sampling.fps": 2.0, "detector.weights": str(caffe_weights)}
    cfg = resolve_config(Path(_config(tmp_path, SMALL_SHARDS)), overrides)
    with pytest.raises(InputError, match="credentials in a URI would travel"):
        with staged_submission(["long.mp4"], "s3://key:secret@b/out?region=x", cfg, overwrite=True):
            pass
    with staged_submission(["cams", "long.mp4"], "s3://b/out?region=x", cfg, overwrite=True) as job:
        stage = Path(job.runtime_env["working_dir"])
        args = shlex.split(job.entrypoint)
        assert args[:4] == ["python", "-m", "jobs", "run"]
        assert args[4:6] == [str(video_set.root / "cams"), str(video_set.root / "long.mp4")]  # made absolute
        assert args[6:] == ["--out", "s3://b/out?region=x", "--config", CONFIG_NAME, "--overwrite"]
        assert sorted(p.name for p in (stage / "weights").iterdir()) == [
            "face_mask_detection.caffemodel", "face_mask_detection.json", "face_mask_detection.prototxt",
        ]
        assert sorted(Path(p).name for p in job.runtime_env["py_modules"]) == ["configs", "detector", "jobs", "sinks"]
        assert job.metadata["out"] == "s3://b/out"
        monkeypatch.chdir(stage)  # the entrypoint's cwd on the head
        shipped = resolve_config(Path(CONFIG_NAME))
        monkeypatch.chdir(video_set.root)
    assert shipped.detector.weights == "weights/face_mask_detection.caffemodel" and shipped.ray.address == "auto"
    assert shipped.sampling == cfg.sampling and shipped.planning == cfg.planning and shipped.resources == cfg.resources
    assert not stage.exists()

    with staged_submission(["long.mp4"], "out", cfg, overwrite=False, ship_code=False, ship_weights=False) as job:
        assert job.entrypoint.startswith("maskjobs run ") and "py_modules" not in job.runtime_env
        assert not (Path(job.runtime_env["working_dir"]) / "weights").exists()
        assert f"--out {video_set.root / 'out'} " in job.entrypoint
    python = "/opt/py/bin/python"
    with staged_submission(["long.mp4"], "o", cfg, overwrite=False, ship_code=False, python=python) as job:
        assert job.entrypoint.startswith("/opt/py/bin/python -m jobs run ")
