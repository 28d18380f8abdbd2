"""Two Ray nodes on 127.0.0.1 (a head and a second ``ray start --address`` node, each with its own
CPUs, object store and stage cache), both running a Python without maskjobs; inputs on a local S3
server (moto), so no node reads the driver's files. A submitted job spreads over both nodes and
gives the rows of the same files read locally; killing the second node's raylet mid-job (while it
decodes shards or runs the detector) still ends with every frame exactly once; a node that joins
mid-job gets detector actors as well as decode tasks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import Result
from typer.testing import CliRunner

from benchmarks.videogen import Scene, write_video
from jobs.cli.main import app
from tests.conftest import S3Server
from tests.jobs.conftest import VideoSet
from tests.rayhead import RayHead, RayWorkerNode, _processes

pytestmark = pytest.mark.slow  # a real 2-node Ray, real videos, spawned processes

SECRET = "s3cr3t-multinode-0123456789"
CONFIG = (
    "planning:\n  shard_frames: 40\n  pack_frames: 0\n"
    "resources:\n  detector_workers: 1\n  detector_cpus: 1\n  decode_cpus: 1\n"
)
Cli = Callable[..., Result]


@pytest.fixture
def cluster(deps_python: Path, tmp_path: Path) -> Iterator[tuple[RayHead, RayWorkerNode]]:
    """A fresh 2-node cluster per test (the second test kills a node)."""
    creds = {"AWS_ACCESS_KEY_ID": "AKIDTESTING", "AWS_SECRET_ACCESS_KEY": SECRET}
    head = RayHead(
        num_cpus=2, python=deps_python,
        env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "MASKJOBS_STAGE_DIR": str(tmp_path / "stage-head"),
             # Ray's hybrid scheduling keeps tasks on the submitting node until it is half busy; with
             # 2 CPUs a node that is quick to decide where 40-frame shards run. Spread them at once.
             "RAY_scheduler_spread_threshold": "0.0", **creds},
    ).start()
    try:
        node = head.add_node(num_cpus=2, resources={"second_node": 1},
                             env={"MASKJOBS_STAGE_DIR": str(tmp_path / "stage-node")})
        yield head, node
    finally:
        head.stop()
    assert not head.pids() and not node.pids(), "processes of the test's Ray cluster outlived it"


@pytest.fixture
def cli(cluster: tuple[RayHead, RayWorkerNode], monkeypatch: pytest.MonkeyPatch) -> Cli:
    head, _ = cluster
    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(app, [*args, "--address", head.dashboard_url], catch_exceptions=False)

    return invoke


def _upload(s3_server: S3Server, video_set: VideoSet, prefix: str, names: tuple[str, ...]) -> str:
    for name in names:
        s3_server.put(f"{prefix}/{name}", (video_set.root / name).read_bytes())
    return s3_server.env_uri(f"{prefix}/")


def _frames(out: Path) -> pd.DataFrame:
    frames = pd.read_parquet(out / "frames").sort_values(["video", "frame"]).reset_index(drop=True)
    frames["detections"] = frames["detections"].map(lambda ds: [tuple(sorted(d.items())) for d in ds])
    return frames


def test_a_job_spreads_over_both_nodes_and_gives_the_local_rows(
    cli: Cli, cluster: tuple[RayHead, RayWorkerNode], video_set: VideoSet, caffe_weights: Path, s3_server: S3Server,
    tmp_path: Path,
) -> None:
    head, node = cluster
    names = ("long.mp4", "mjpeg.mov")
    prefix = _upload(s3_server, video_set, "multi-a", names)
    cfg = tmp_path / "job.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out"
    result = cli("submit", prefix, "--out", str(out), "--weights", str(caffe_weights), "--config", str(cfg),
                 "--no-check-inputs", "--wait")  # this machine has no S3 credentials: only the cluster's nodes do
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output

    job = json.loads((out / "job.json").read_text())
    placement = job["placement"]
    # both nodes worked: each decoded shards or ran the detector (the actor takes a CPU on one of them)
    assert len(placement) == 2, placement
    assert all(entry["shards"] or entry["detectors"] for entry in placement.values()), placement
    assert sum(entry["detectors"] for entry in placement.values()) == 1
    shards = [s for entry in placement.values() for s in entry["shards"]]
    assert len(shards) == len(set(shards)) == 11  # long.mp4 in 10 shards of 40 frames, mjpeg.mov in 1
    assert not list((tmp_path / "stage-head").glob("*.*[!k]")) and not list((tmp_path / "stage-node").glob("*.*[!k]"))
    for path in out.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes()

    local = tmp_path / "multi-a"  # named as the prefix: the default camera is the folder
    local.mkdir()
    for name in names:
        (local / name).symlink_to(video_set.root / name)
    # in its own process, as a user runs it: Ray keeps the token auth it saw (RAY_AUTH_TOKEN above)
    # for the rest of a process, and the next embedded Ray in this one would then fail to start
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    ran = subprocess.run([str(Path(sys.executable).parent / "maskjobs"), "run", str(local), "--out", str(tmp_path / "ref"),
                          "--weights", str(caffe_weights), "--config", str(cfg)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    pd.testing.assert_frame_equal(_frames(tmp_path / "ref"), _frames(out))


def _working_on(node: RayWorkerNode) -> list[str]:
    """Titles of ``node``'s worker processes decoding a shard or running the detector now."""
    raylet = node.raylet_pid()
    return [args for _, ppid, args in _processes()
            if ppid == raylet and args.startswith(("ray::decode_shard", "ray::DetectorActor"))]


def test_killing_the_second_nodes_raylet_mid_job_loses_and_doubles_no_frame(
    cli: Cli, cluster: tuple[RayHead, RayWorkerNode], video_set: VideoSet, caffe_weights: Path, s3_server: S3Server,
    tmp_path: Path,
) -> None:
    head, node = cluster
    prefix = _upload(s3_server, video_set, "multi-b", ("long.mp4",))
    cfg = tmp_path / "job.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out"
    result = cli("submit", prefix, "--out", str(out), "--weights", str(caffe_weights), "--config", str(cfg),
                 "--no-check-inputs")
    assert result.exit_code == 0, result.output
    job_id = result.stdout.splitlines()[0]

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (working := _working_on(node)):
        time.sleep(0.2)
    assert working, "the job never used the second node"
    parts = sorted((out / "frames").glob("part-*.parquet"))
    assert len(parts) < 10, "the job ended before the kill"
    raylet = node.raylet_pid()
    assert raylet is not None
    os.kill(raylet, signal.SIGKILL)

    logs = cli("logs", job_id, "--follow")
    assert logs.exit_code == 0
    status = cli("status", job_id)
    assert "SUCCEEDED" in status.stdout, status.stdout + logs.stdout[-3000:]
    frames = pd.read_parquet(out / "frames")
    assert not frames.duplicated(["video", "frame"]).any()
    np.testing.assert_array_equal(np.sort(frames["frame"].to_numpy()), np.arange(400))
    videos = pd.read_parquet(out / "videos.parquet")
    assert videos.loc[0, "status"] == "done" and videos.loc[0, "frames_processed"] == 400
    assert len(json.loads((out / "job.json").read_text())["placement"]) >= 1


def test_a_node_joining_mid_job_gets_detector_actors(
    deps_python: Path, tmp_path: Path, scene: Scene, ffmpeg: str, caffe_weights: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A detector-bound job (every frame) starts on a 2-CPU head with one actor; a 4-CPU node
    joins while it runs (as an autoscaler adds one): the job adds the actors the 6 CPUs hold
    (job.json's ``sizing.resized``), some of them on the new node, and every frame is there once."""
    clips = {f"c{i}.mp4": 600 for i in range(12)}  # long enough for a node whose start waits on a busy GCS
    root = tmp_path / "in"
    root.mkdir()
    for i, (name, n) in enumerate(clips.items()):
        write_video(root / name, scene, n, ffmpeg=ffmpeg, first=7 * i, gop=50)
    cfg = tmp_path / "job.yaml"
    cfg.write_text("planning:\n  shard_frames: 100\n  pack_frames: 0\n")  # resources: auto
    head = RayHead(
        num_cpus=2, python=deps_python,
        env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "MASKJOBS_STAGE_DIR": str(tmp_path / "stage-head")},
    ).start()
    try:
        monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
        for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            monkeypatch.delenv(var, raising=False)

        def cli(*args: str) -> Result:
            return CliRunner().invoke(app, [*args, "--address", head.dashboard_url], catch_exceptions=False)

        out = tmp_path / "out"
        result = cli("submit", str(root), "--out", str(out), "--weights", str(caffe_weights), "--config", str(cfg))
        assert result.exit_code == 0, result.output
        job_id = result.stdout.splitlines()[0]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list((out / "frames").glob("part-*.parquet")):
            time.sleep(0.2)
        assert list((out / "frames").glob("part-*.parquet")), "the job never committed a shard"
        node = head.add_node(num_cpus=4, env={"MASKJOBS_STAGE_DIR": str(tmp_path / "stage-node")})
        committed = len(list((out / "frames").glob("part-*.parquet")))
        assert committed < 72, "the job ended before the node joined"

        logs = cli("logs", job_id, "--follow")
        assert logs.exit_code == 0
        status = cli("status", job_id)
        assert "SUCCEEDED" in status.stdout, status.stdout + logs.stdout[-3000:]
    finally:
        head.stop()
    assert not head.pids() and not node.pids(), "processes of the test's Ray cluster outlived it"

    job = json.loads((out / "job.json").read_text())
    grown = [c for c in job["sizing"]["resized"] if c["cpus"] == 6.0]
    assert grown and grown[-1]["detector_workers"] >= 2, job["sizing"]
    detectors = {node_id: entry["detectors"] for node_id, entry in job["placement"].items()}
    assert sum(detectors.values()) == grown[-1]["detector_workers"], job["placement"]  # actors are only added
    assert len([n for n in detectors.values() if n]) == 2, f"no detector on the new node: {job['placement']}"
    frames = pd.read_parquet(out / "frames")
    assert not frames.duplicated(["video", "frame"]).any() and len(frames) == sum(clips.values())
