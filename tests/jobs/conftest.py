"""Generated test videos: real faces, several codecs and containers, and broken files.

Building them encodes videos with ffmpeg (and ``walk_set`` runs ``maskjobs run`` on a real Ray): a
test that uses ``video_set`` or ``walk_set`` is marked ``slow``, so ``pytest -m "not slow"`` never builds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.videogen import PathScene, Scene, Walker, write_video
from tests.conftest import read_rgb


@dataclass(frozen=True)
class VideoSet:
    root: Path
    good: dict[str, int]  # video id -> frame count
    broken: dict[str, str]  # video id -> what is wrong


@pytest.fixture(scope="session")
def scene(masked_photo: Path, unmasked_photo: Path) -> Scene:
    return Scene((read_rgb(unmasked_photo), read_rgb(masked_photo)), width=480, height=272)


def _leaving(scene: Scene) -> PathScene:
    """``scene``'s two photos moving right, out of its canvas by frame ~30 of 64."""
    walkers = tuple(
        Walker(photo, (k * scene.width // 2, 20), (scene.width * 2, 20), scene.height - 40)
        for k, photo in enumerate(scene.photos)
    )
    return PathScene(walkers, 64, width=scene.width, height=scene.height)


@pytest.fixture(scope="session")
def video_set(tmp_path_factory: pytest.TempPathFactory, scene: Scene, ffmpeg: str) -> VideoSet:
    root = tmp_path_factory.mktemp("videos")
    (root / "cams" / "north").mkdir(parents=True)
    good = {
        "long.mp4": write_video(root / "long.mp4", scene, 400, ffmpeg=ffmpeg, codec="h264", gop=40),
        "cams/north/hevc.mkv": write_video(root / "cams/north/hevc.mkv", scene, 48, ffmpeg=ffmpeg, codec="hevc"),
        "cams/vp9.webm": write_video(root / "cams/vp9.webm", scene, 36, ffmpeg=ffmpeg, codec="vp9"),
        "mpeg4.avi": write_video(root / "mpeg4.avi", scene, 30, ffmpeg=ffmpeg, codec="mpeg4", fps=30),
        "mjpeg.mov": write_video(root / "mjpeg.mov", scene, 20, ffmpeg=ffmpeg, codec="mjpeg", fps=10),
        # faces leave the frame halfway: its shard ends with faceless frames
        "leaves.mp4": write_video(root / "leaves.mp4", _leaving(scene), 64, ffmpeg=ffmpeg, gop=16),
    }
    counts = {
        "long.mp4": 400, "cams/north/hevc.mkv": 48, "cams/vp9.webm": 36, "mpeg4.avi": 30, "mjpeg.mov": 20,
        "leaves.mp4": 64,
    }
    (root / "empty.mp4").touch()
    (root / "notes.mkv").write_text("this is a text file with a video extension\n" * 50)
    data = good["long.mp4"].read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    data = good["mpeg4.avi"].read_bytes()
    (root / "badheader.avi").write_bytes(b"\x00\xde\xad\xbe\xef" * 40 + data[200:])
    broken = {
        "empty.mp4": "empty",
        "notes.mkv": "not a readable video",
        "truncated.mp4": "not a readable video",
        "badheader.avi": "not a readable video",
    }
    return VideoSet(root, counts, broken)


@dataclass(frozen=True)
class WalkSet:
    """Videos of people moving along known paths, and one job's output over them."""

    root: Path
    scenes: dict[str, PathScene]  # video id -> scene (walker k = person k)
    unmasked: dict[str, set[int]]  # video id -> walkers not wearing a mask
    out: Path  # `maskjobs run root --out out --annotate` with small shards


WALK_CONFIG = "planning:\n  shard_frames: 40\n  pack_frames: 40\n"


@pytest.fixture(scope="session")
def walk_set(
    tmp_path_factory: pytest.TempPathFactory, masked_photo: Path, unmasked_photo: Path, ffmpeg: str, caffe_weights: Path
) -> WalkSet:
    """``b_walk.mp4``: an unmasked face crossing the frame left to right along the top and a
    masked one right to left along the bottom (120 frames, keyframes every 20, so several
    shards); ``a_masked.mp4``: one masked face drifting (30 frames, packed into one shard)."""
    from typer.testing import CliRunner

    from jobs.cli.main import app

    unmasked, masked = read_rgb(unmasked_photo), read_rgb(masked_photo)
    root = tmp_path_factory.mktemp("walks")
    scenes = {
        "b_walk.mp4": PathScene((Walker(unmasked, (-60, 0), (460, 0), 240), Walker(masked, (363, 240), (-80, 240), 240)), 120),
        "a_masked.mp4": PathScene((Walker(masked, (40, 100), (200, 140), 240),), 30),
    }
    for name, scene in scenes.items():
        write_video(root / name, scene, scene.frames, ffmpeg=ffmpeg, gop=20)
    out = tmp_path_factory.mktemp("walk-out") / "job"
    cfg = root.parent / "walk.yaml"
    cfg.write_text(WALK_CONFIG)
    result = CliRunner().invoke(
        app, ["run", str(root), "--out", str(out), "--weights", str(caffe_weights), "--config", str(cfg), "--annotate"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return WalkSet(root, scenes, {"b_walk.mp4": {0}, "a_masked.mp4": set()}, out)
