"""Generated test videos: real faces, several codecs and containers, and broken files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import read_rgb
from tests.videogen import Scene, write_video


@dataclass(frozen=True)
class VideoSet:
    root: Path
    good: dict[str, int]  # video id -> frame count
    broken: dict[str, str]  # video id -> what is wrong


@pytest.fixture(scope="session")
def scene(masked_photo: Path, unmasked_photo: Path) -> Scene:
    return Scene((read_rgb(unmasked_photo), read_rgb(masked_photo)), width=480, height=272)


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
    }
    counts = {"long.mp4": 400, "cams/north/hevc.mkv": 48, "cams/vp9.webm": 36, "mpeg4.avi": 30, "mjpeg.mov": 20}
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
