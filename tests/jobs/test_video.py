"""Opening and reading a video (``jobs.video``): one error, naming the file and the cause."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from jobs.errors import ImageReadError, one_line
from jobs.video import VideoReadError, open_video


def _sound_only(path: Path) -> None:
    import subprocess

    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", "sine=d=2",
                    "-c:a", "aac", str(path)], check=True)


def _a_picture(path: Path) -> None:
    import cv2

    path.write_bytes(cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))[1].tobytes())


@pytest.mark.parametrize(
    "make,cause",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.touch(), "the file is empty"),
        (lambda p: p.write_text("this is a text file with a video extension\n" * 50), "not a readable video ("),
        (_sound_only, "no video stream (a sound recording?)"),  # was decord's "Check failed: st_nb >= 0 (...)"
        (_a_picture, "not a readable video ("),  # was "([20:07:36] /project/src/video/video_reader.cc:285: [...] ..."
    ],
    ids=["missing", "empty", "text", "sound", "picture"],
)
def test_an_unreadable_file_is_one_error_naming_it(tmp_path: Path, make, cause: str) -> None:
    path = tmp_path / "clip.mp4"
    make(path)
    with pytest.raises(VideoReadError) as info:
        open_video(path)
    err = info.value
    assert isinstance(err, ImageReadError)  # the CLI's exit code 2 for unreadable inputs
    assert err.path == str(path) and err.cause.startswith(cause)
    assert str(err) == f"{path}: {err.cause}" and "\n" not in str(err)
    assert ".cc:" not in err.cause  # decord's times and C++ source lines are left out
    assert one_line(err, limit=10_000) == str(err)  # one line, whatever the path's length


def test_a_newline_in_the_name_is_escaped_in_the_one_line(tmp_path: Path) -> None:
    """decord's own message names the file too: it was cut at the name's newline."""
    path = tmp_path / "bad\nname.mp4"
    path.write_text("not a video\n" * 50)
    with pytest.raises(VideoReadError) as info:
        open_video(path)
    shown = str(tmp_path / "bad\\x0aname.mp4")
    assert info.value.path == str(path) and "\n" not in str(info.value)
    assert str(info.value).startswith(f"{shown}: not a readable video (") and shown in info.value.cause


def test_the_error_survives_pickling(tmp_path: Path) -> None:
    """Ray pickles an exception raised in a task."""
    err = VideoReadError(tmp_path / "v.mp4", "decoding failed at frame 7 (boom)")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is VideoReadError and (back.path, back.cause, str(back)) == (err.path, err.cause, str(err))


@pytest.mark.slow  # needs the generated video set
def test_reading_past_the_end_names_the_frame(video_set) -> None:
    path = video_set.root / "mjpeg.mov"  # 20 frames
    with open_video(path) as video:
        assert len(video) == 20
        assert video.timestamps(np.array([0, 19])).shape == (2,)
        assert video.batch(np.array([3, 4])).shape == (2, 272, 480, 3)
        with pytest.raises(VideoReadError, match=r"mjpeg\.mov: decoding failed at frame 25 \("):
            video.timestamps(np.array([25]))
        with pytest.raises(VideoReadError, match=r"decoding failed at frame 30 \("):
            video.batch(np.array([30]))
        read = [f.copy() for f in video.read(np.array([0, 5, 19]))]
        assert len(read) == 3 and np.array_equal(read[1], video.batch(np.array([5]))[0])
    with pytest.raises(ValueError, match="closed"):
        len(video)


@pytest.mark.parametrize("side", [16, 32, 48, 64, 96])
def test_narrow_frames_come_out_as_pyav_decodes_them(tmp_path: Path, ffmpeg: str, side: int) -> None:
    """decord2 hands frames 16, 32, 48 or 96 px wide with each row's padding as channels,
    ``(H, W, k)``, k > 3, and its ``get_batch`` refuses them: a 32x32 camera clip failed its
    every shard ("expected an (H, W, 3) picture, got shape (32, 32, 6)")."""
    import subprocess

    import av

    path = tmp_path / f"sq{side}.mp4"
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc=size={side}x{side}:rate=15",
                    "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    with av.open(str(path)) as container:
        want = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with open_video(path) as video:
        read = [f.copy() for f in video.read(np.array([0, 3, 14]))]
        batch = video.batch(np.array([5, 2, 9]))
    assert [f.shape for f in read] == [(side, side, 3)] * 3
    assert all(np.array_equal(f, want[i]) for f, i in zip(read, [0, 3, 14]))
    assert np.array_equal(batch, np.stack([want[5], want[2], want[9]]))


def _cut_start(path: Path, frames: int) -> None:
    """A clip of one noisy picture (its keyframe fills most of the file), moov first, whose
    second half is lost: the keyframe is cut."""
    import subprocess

    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    picture = path.with_suffix(".png")
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-f", "lavfi", "-i", "nullsrc=s=320x240,geq=random(1)*255:128:128",
                    "-frames:v", "1", str(picture)], check=True)
    whole = path.with_suffix(".whole.mp4")
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-loop", "1", "-i", str(picture), "-frames:v", str(frames),
                    "-r", "15", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(whole)],
                   check=True)
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("frames", [30, 3], ids=["not-opened", "opened"])
def test_a_clip_whose_first_keyframe_is_cut_says_so(tmp_path: Path, frames: int) -> None:
    """Was decord's ``filter_graph.cc:55: Check failed: avfilter_graph_create_filter(...) ...
    Cannot create`` when opening it (30 frames: FFmpeg's probe found no picture format), or
    "probe failed (... threaded_decoder.cc:218: Check failed: avcodec_send_packet ...)" on
    its first frame (3 frames)."""
    from jobs.pipeline.probe import ProbeError, probe_video
    from jobs.video import UNDECODABLE

    path = tmp_path / "cut.mp4"
    _cut_start(path, frames)
    with pytest.raises(ProbeError) as info:
        probe_video(str(path))
    assert str(info.value) == UNDECODABLE
