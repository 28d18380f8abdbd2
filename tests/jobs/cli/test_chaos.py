"""Chaos: SIGKILL the driver of one ``maskjobs run --annotate`` job at seeded random moments
(in start-up, between and during shard commits, and in the finishing pass once every frame
is committed), rerun after each kill, and end with exactly the output of a run that was
never killed, with no Ray process left."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from benchmarks.videogen import Scene, write_video
from jobs.pipeline.watchdog import descendants, stat

pytestmark = pytest.mark.slow  # runs `maskjobs run` many times on a real local Ray

SEED = 17
KILLS = 10
CLIPS = {"a.mp4": 40, "b.mp4": 32, "c.mp4": 24}  # video -> frames (all sampled)


def _committed(out: Path) -> int:
    """Rows in the committed shard files (each is renamed into place whole)."""
    total = 0
    for part in (out / "frames").glob("part-*.parquet"):
        try:
            total += pq.read_metadata(part).num_rows
        except (OSError, ValueError):  # replaced while read (the finishing pass rewrites track ids)
            continue
    return total


def _run(cmd: list[str], seen: dict[int, int], until: Callable[[float], bool]) -> int | None:
    """Runs ``cmd``; SIGKILLs it once ``until(seconds since start)`` holds. Records every process
    it starts in ``seen``. Returns its exit code, or None when it was killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < 240:
        seen.update(descendants(proc.pid))
        if until(time.monotonic() - t0):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return None
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    code = proc.wait()
    assert code == 0, (proc.stderr.read() if proc.stderr else "")[-3000:]
    return code


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def _alive(procs: dict[int, int]) -> set[int]:
    return {pid for pid, start in procs.items() if (stat(pid) or (0, -1))[1] == start}


def _frames(out: Path) -> pd.DataFrame:
    frames = pd.read_parquet(out / "frames").sort_values(["video", "frame"]).reset_index(drop=True)
    frames["detections"] = frames["detections"].map(lambda d: json.dumps(list(d), default=float, sort_keys=True))
    return frames


def test_sigkill_at_random_moments_ends_exact(tmp_path: Path, scene: Scene, ffmpeg: str, caffe_weights: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for i, (name, n) in enumerate(CLIPS.items()):
        write_video(root / name, scene, n, ffmpeg=ffmpeg, first=3 * i, gop=8)
    cfg = tmp_path / "job.yaml"
    cfg.write_text("planning:\n  shard_frames: 8\n  pack_frames: 0\n")

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-c", "from jobs.cli.main import app; app()", "run", str(root), "--out", str(out),
                "--weights", str(caffe_weights), "--config", str(cfg), "--annotate"]

    seen: dict[int, int] = {}
    ref = tmp_path / "ref"
    _run(cmd(ref), seen, lambda t: False)

    out = tmp_path / "out"
    total = sum(CLIPS.values())
    rng = random.Random(SEED)

    def moment(k: int) -> Callable[[float], bool]:
        """When to kill run ``k``: a seeded random moment of the job from where it stands."""
        start = _committed(out)
        if start >= total or k >= 8:  # the finishing pass: a random instant once every frame is committed
            extra = rng.uniform(0.0, 1.5)
            since: list[float] = []

            def finishing(t: float) -> bool:
                if not since and _committed(out) >= total:
                    since.append(t)
                return bool(since) and t - since[0] >= extra
            return finishing
        if k in (0, 5):  # start-up: Ray, the detector actors, probing
            at = rng.uniform(0.3, 3.0)
            return lambda t: t >= at
        target = min(total - 1, start + rng.randint(1, 16))  # mid-run: after a random number of frames
        extra = rng.uniform(0.0, 0.4)
        since = []

        def mid_run(t: float) -> bool:
            if not since and _committed(out) >= target:
                since.append(t)
            return bool(since) and t - since[0] >= extra
        return mid_run

    kills, finishing = [], 0
    for k in range(2 * KILLS):
        if len(kills) >= KILLS:
            break
        if _run(cmd(out), seen, moment(k)) is None:
            kills.append(round(_committed(out) / total, 2))
            finishing += _committed(out) >= total
    print(f"killed {len(kills)} times, share of frames committed at each kill: {kills}")
    assert _run(cmd(out), seen, lambda t: False) == 0
    assert len(kills) >= KILLS and finishing >= 2

    got, want = _frames(out), _frames(ref)
    assert len(got) == total and not got.duplicated(["video", "frame"]).any()
    pd.testing.assert_frame_equal(got, want)  # the same detections and track ids as one run
    tracks = pd.read_parquet(out / "tracks.parquet").sort_values(["video", "track"]).reset_index(drop=True)
    ref_tracks = pd.read_parquet(ref / "tracks.parquet").sort_values(["video", "track"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(tracks, ref_tracks)  # thumbnails included
    assert tracks[tracks.label == "NoMask"].thumbnail.notna().all() and len(tracks)
    videos = pd.read_parquet(out / "videos.parquet").set_index("video")
    assert (videos.status == "done").all() and videos.frames_processed.to_dict() == CLIPS
    manifest = json.loads((out / "annotated" / "manifest.json").read_text())
    ref_manifest = json.loads((ref / "annotated" / "manifest.json").read_text())
    assert manifest == ref_manifest
    assert all((out / "annotated" / e["file"]).is_file() for e in manifest.values())
    assert not list((out / "annotated").glob(".*")) and not list((out / "frames").glob(".*"))

    deadline = time.monotonic() + 60  # the watchdogs reap within seconds; a loaded CI machine is slower
    while _alive(seen) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = {pid: _cmdline(pid) for pid in _alive(seen)}
    assert not left, f"Ray processes outlived their killed drivers: {left}"
