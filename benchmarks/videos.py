"""Benchmark videos, generated once into a work folder: the shared photos panned and zoomed."""

from __future__ import annotations

import argparse
import logging
import subprocess
import tempfile
from pathlib import Path

from benchmarks.common import default_weights, load_photos, machine
from benchmarks.videogen import CODECS, PathScene, Scene, Walker, write_video

SIZES = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    """The options of every benchmark over videos: ``--frames``, ``--video``, ``--weights``, ``--workdir``."""
    p.add_argument("--frames", type=int, default=2700, help="frames per generated video")
    p.add_argument("--video", type=Path, action="append", default=[],
                   help="a video of your own to measure instead of the generated ones (repeatable)")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "maskjobs-bench")


def start(args: argparse.Namespace) -> Path:
    """For parsed :func:`add_video_arguments`: quiet logging, the work folder made, the
    machine printed. Returns the weights' resolved path."""
    logging.basicConfig(level=logging.WARNING)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(machine())
    return (args.weights or default_weights()).resolve()


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ensure_video(
    workdir: Path, size: str, frames: int, *, fps: float = 30.0, codec: str = "h264-main", first: int = 0,
    name: str | None = None,
) -> Path:
    """An H.264 video of ``frames`` frames at ``size`` (generated once; cached by name).

    ``h264-main`` is x264 ``veryfast`` (CABAC, B-frames), as cameras and phones write it.
    """
    path = workdir / (name or f"{codec}-{size}-{frames}{CODECS[codec][1]}")
    if not path.exists():
        width, height = SIZES[size]
        scene = Scene(tuple(load_photos()), width=width, height=height)
        tmp = path.with_name(f".tmp-{path.name}")
        print(f"generating {path} ({frames} frames, {width}x{height}, {codec}) ...", flush=True)
        write_video(tmp, scene, frames, ffmpeg=_ffmpeg(), codec=codec, fps=fps, gop=int(2 * fps), first=first)
        tmp.rename(path)
    return path


def ensure_walkers_video(workdir: Path, size: str, frames: int, *, fps: int = 25, gop: int = 250) -> Path:
    """A harder scene than :func:`ensure_video`'s: four faces (the two photos and their
    mirror images, at different heights) walking across the picture along straight lines,
    overlapping and leaving it, encoded as a surveillance camera might (``h264-camera``: x264
    ``fast``, High profile, CRF 26; 25 fps, a keyframe every 250 frames, unless ``fps`` and
    ``gop`` say otherwise). Generated once."""
    tag = "" if (fps, gop) == (25, 250) else f"-{fps}fps-g{gop}"
    path = workdir / f"walkers-{size}-{frames}{tag}.mp4"
    if path.exists():
        return path
    width, height = SIZES[size]
    photos = list(load_photos())
    photos += [p[:, ::-1].copy() for p in photos]

    def at(x: float, y: float) -> tuple[float, float]:
        return x * width, y * height

    walkers = (
        Walker(photos[0], at(-0.16, 0.07), at(0.99, 0.19), round(0.39 * height)),
        Walker(photos[1], at(0.89, 0.52), at(-0.10, 0.48), round(0.33 * height)),
        Walker(photos[2], at(0.31, -0.09), at(0.47, 0.65), round(0.24 * height)),
        Walker(photos[3], at(0.10, 0.65), at(0.78, 0.04), round(0.28 * height)),
    )
    scene = PathScene(walkers, frames, width=width, height=height)
    tmp = path.with_name(f".tmp-{path.name}")
    print(f"generating {path} ({frames} frames, {width}x{height}, four walkers) ...", flush=True)
    write_video(tmp, scene, frames, ffmpeg=_ffmpeg(), codec="h264-camera", fps=fps, gop=gop)
    tmp.rename(path)
    return path


def ensure_repeated(source: Path, times: int) -> Path:
    """``source`` played ``times`` times in a row, as one video (stream copy, no re-encode)."""
    path = source.with_name(f"{source.stem}-x{times}{source.suffix}")
    if not path.exists():
        listing = source.with_name(f".{source.stem}-x{times}.txt")
        listing.write_text(f"file '{source.name}'\n" * times)
        tmp = path.with_name(f".tmp-{path.name}")
        subprocess.run(
            [_ffmpeg(), "-y", "-loglevel", "error", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(tmp)],
            check=True,
        )
        listing.unlink()
        tmp.rename(path)
    return path


def ensure_clips(workdir: Path, count: int, size: str, frames: int, *, fps: float = 30.0) -> Path:
    """A folder of ``count`` short H.264 clips, each a different stretch of the scene."""
    folder = workdir / f"clips-{count}x{frames}-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        ensure_video(folder, size, frames, fps=fps, first=k * 17, name=f"clip-{k:03d}.mp4")
    return folder
