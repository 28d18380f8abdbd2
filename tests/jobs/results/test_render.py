"""``maskjobs run --annotate``: the annotated MP4s decode, and their boxes are where the rows say."""

from __future__ import annotations

import json

import decord
import imageio_ffmpeg
import numpy as np
import pandas as pd
import pytest

from benchmarks.videogen import Scene, write_video
from jobs.results.privacy import hide_faces
from jobs.results.render import MASK_RGB, NOMASK_RGB, VideoDetections, annotate_video
from tests.jobs.conftest import WalkSet

pytestmark = pytest.mark.slow  # encodes and decodes videos; most tests read the walkers job's output


def _edge_points(d: dict, n: int = 5) -> list[tuple[int, int]]:
    """Points (x, y) along the four edges of a detection's box, away from the corners."""
    x1, y1, x2, y2 = (int(round(d[k])) for k in ("x1", "y1", "x2", "y2"))
    ts = np.linspace(0.25, 0.75, n)
    pts = [(x1, round(y1 + t * (y2 - y1))) for t in ts] + [(x2, round(y1 + t * (y2 - y1))) for t in ts]
    pts += [(round(x1 + t * (x2 - x1)), y2) for t in ts]  # the top edge may be under the label
    return pts


def test_annotated_videos_are_browser_playable_h264_of_every_sampled_frame(walk_set: WalkSet) -> None:
    videos = pd.read_parquet(walk_set.out / "videos.parquet").set_index("video")
    manifest = json.loads((walk_set.out / "annotated" / "manifest.json").read_text())
    assert set(manifest) == set(walk_set.scenes)
    for video in walk_set.scenes:
        path = walk_set.out / "annotated" / manifest[video]["file"]
        assert path.name == f"{video}.mp4"
        reader = decord.VideoReader(str(path))
        assert len(reader) == videos.loc[video, "frames_processed"] == manifest[video]["frames"]
        assert reader[0].shape == (videos.loc[video, "height"], videos.loc[video, "width"], 3)
        assert abs(reader.get_avg_fps() - 25) < 0.01
        meta = next(imageio_ffmpeg.read_frames(str(path)))
        assert meta["codec"].startswith("h264") and meta["pix_fmt"].startswith("yuv420p")
        data = path.read_bytes()
        assert 0 < data.find(b"moov") < data.find(b"mdat")  # faststart: playable while downloading


def test_boxes_are_drawn_where_the_rows_say(walk_set: WalkSet) -> None:
    frames = pd.read_parquet(walk_set.out / "frames")
    walk = frames[frames.video == "b_walk.mp4"].set_index("frame").sort_index()
    annotated = decord.VideoReader(str(walk_set.out / "annotated" / "b_walk.mp4.mp4"))
    source = decord.VideoReader(str(walk_set.root / "b_walk.mp4"))
    checked = 0
    for pos in range(0, len(walk), 17):
        frame = int(walk.index[pos])
        drawn = annotated[pos].asnumpy().astype(int)
        plain = source[frame].asnumpy().astype(int)
        boxes = np.array([[d[k] for k in ("x1", "y1", "x2", "y2")] for d in walk.loc[frame, "detections"]])
        hidden = hide_faces(source[frame].asnumpy(), boxes.reshape(-1, 4), "blur").astype(int)  # the default
        for d in walk.loc[frame, "detections"]:
            colour = np.array(MASK_RGB if d["label"] == "Mask" else NOMASK_RGB)
            other = np.array(NOMASK_RGB if d["label"] == "Mask" else MASK_RGB)
            for x, y in _edge_points(d):
                assert np.abs(drawn[y, x] - colour).max() < 80, (frame, d, (x, y), drawn[y, x])
                assert np.abs(drawn[y, x] - other).max() > 120
                assert np.abs(plain[y, x] - colour).max() > 60  # the source is not already that colour there
                checked += 1
            # inside the box, away from the edges and the label: the source picture blurred, not paint
            cx, cy = round((d["x1"] + d["x2"]) / 2), round((d["y1"] * 0.3 + d["y2"] * 0.7))
            assert np.abs(drawn[cy, cx] - hidden[cy, cx]).max() < 40
    assert checked >= 8 * 2 * 15


def test_an_odd_sized_video_is_padded_to_even_dimensions(tmp_path, scene: Scene, ffmpeg: str) -> None:
    """yuv420p needs even dimensions: a 321x241 source comes out 322x242, its pixels in place."""
    odd = Scene(scene.photos, width=321, height=241)
    source = write_video(tmp_path / "odd.mp4", odd, 6, ffmpeg=ffmpeg, codec="h264-444")
    frames = np.array([0, 2, 4])
    box = np.array([[100.0, 60.0, 180.0, 150.0]] * 3)
    dets = VideoDetections(frames, frames / 25.0, np.ones(3, np.int64), box, np.zeros(3, bool), np.full(3, 0.9),
                           np.array([4, 4, 4]))
    out = tmp_path / "annotated" / "odd.mp4"
    assert annotate_video(str(source), dets, str(out), rate=12.5, width=321, height=241) == 3
    reader = decord.VideoReader(str(out))
    assert len(reader) == 3 and reader[0].shape == (242, 322, 3)
    image = reader[1].asnumpy().astype(int)
    assert np.abs(image[105, 100] - NOMASK_RGB).max() < 80 and np.abs(image[105, 180] - NOMASK_RGB).max() < 80
    assert not list(out.parent.glob(".*.part"))  # nothing left aside


def _rchar() -> int:
    """Bytes this process has read through read() calls so far (page cache included), its
    reaped children's too (ffmpeg's reads of the frames piped to it)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def test_annotating_reads_the_video_once(tmp_path, ffmpeg: str) -> None:
    """A 720p clip of 300 frames is ~800 MB of RGB frames: annotating it reads the file in
    one pass, not once per 64 MB of frames (each reader open scans the whole file)."""
    import subprocess

    src = tmp_path / "long720.mp4"
    subprocess.run(
        [ffmpeg, "-y", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25", "-frames:v", "300",
         "-c:v", "libx264", "-preset", "ultrafast", "-g", "50", str(src)],
        check=True,
    )
    frames = np.arange(0, 300, 2)
    n = len(frames)
    dets = VideoDetections(frames, frames / 25.0, np.zeros(n, np.int64), np.zeros((0, 4)), np.zeros(0, bool),
                           np.zeros(0), np.zeros(0, np.int64))
    before = _rchar()
    written = annotate_video(str(src), dets, str(tmp_path / "out.mp4"), rate=12.5, width=1280, height=720,
                             preset="ultrafast")
    piped = n * 1280 * 720 * 3  # what the encoder read from its pipe
    ratio = (_rchar() - before - piped) / src.stat().st_size
    assert written == n
    assert ratio < 2.5, f"read the video {ratio:.1f} times"
    reader = decord.VideoReader(str(tmp_path / "out.mp4"))
    source = decord.VideoReader(str(src))
    assert len(reader) == n
    for pos in (0, n // 2, n - 1):  # the right source frames, in order (below the banner)
        diff = np.abs(reader[pos].asnumpy()[100:].astype(int) - source[int(frames[pos])].asnumpy()[100:].astype(int))
        assert diff.mean() < 8, (pos, diff.mean())


@pytest.mark.parametrize("order", ["fine first: the stuck piece runs in a task", "stuck first: the stuck piece runs on the idle detector actor"])
def test_a_stuck_render_piece_loses_only_its_own_videos_extras(
    tmp_path, scene: Scene, ffmpeg: str, caffe_weights, order: str
) -> None:
    """Rendering one video never finishes (after every shard is committed): the job still
    ends, within the no-progress limit, with the other video's annotated video and
    thumbnails, and the stuck one's rows and tracks, without its extras. The first piece
    goes to the one detector actor (stopped by killing it), the other to a task (cancelled)."""
    import os
    import subprocess
    import sys

    root = tmp_path / "in"
    root.mkdir()
    fine, stuck = ("a_fine.mp4", "b_stuck.mp4") if order.startswith("fine") else ("b_fine.mp4", "a_stuck.mp4")
    for name in (fine, stuck):  # videos are rendered in name order
        write_video(root / name, scene, 24, ffmpeg=ffmpeg, gop=12)
    cfg = tmp_path / "job.yaml"
    cfg.write_text("planning:\n  shard_timeout_s: 5\n")
    out = tmp_path / "o"
    env = {**os.environ, "MASKJOBS_TEST_FAULT": "render-hang:stuck.mp4"}
    proc = subprocess.run(
        [sys.executable, "-c", "from jobs.cli.main import app; app()", "run", str(root), "--out", str(out),
         "--weights", str(caffe_weights), "--config", str(cfg), "--annotate"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{stuck}: thumbnails/annotated video failed (no progress for 5 s" in proc.stderr
    videos = pd.read_parquet(out / "videos.parquet").set_index("video")
    assert (videos.status == "done").all() and (videos.frames_processed == 24).all()
    manifest = json.loads((out / "annotated" / "manifest.json").read_text())
    assert set(manifest) == {fine} and (out / "annotated" / f"{fine}.mp4").is_file()
    assert not (out / "annotated" / f"{stuck}.mp4").exists()
    tracks = pd.read_parquet(out / "tracks.parquet")
    unmasked = tracks[tracks.label == "NoMask"].set_index("video")
    assert set(tracks.video) == {fine, stuck}
    assert unmasked.loc[[fine], "thumbnail"].notna().all()
    assert unmasked.loc[[stuck], "thumbnail"].isna().all()


def test_the_annotate_reader_gives_decords_frames_in_every_codec(video_set) -> None:
    """Annotated videos read with OpenCV, detections come from decord: the same frame index
    must be the same picture in every container and codec of the video set."""
    from jobs.results.render import _stream

    for video, n in video_set.good.items():
        path = str(video_set.root / video)
        frames = np.unique(np.linspace(0, n - 1, 7).round().astype(np.int64))
        source = decord.VideoReader(path)
        for idx, image in zip(frames.tolist(), _stream(path, frames)):
            want = source[idx].asnumpy().astype(int)
            assert image.shape == want.shape, video
            assert np.abs(image.astype(int) - want).mean() < 6, (video, idx)
            if idx + 1 < n:  # and not its neighbour, where the scene moves between them
                other = source[idx + 1].asnumpy().astype(int)
                if np.abs(other - want).mean() > 2:
                    assert np.abs(image.astype(int) - want).mean() < np.abs(image.astype(int) - other).mean(), (video, idx)


def test_a_phone_video_stored_sideways_is_annotated_as_shown(tmp_path, scene: Scene, ffmpeg: str, caffe_weights) -> None:
    """A portrait phone video is stored sideways with a rotation in its container: decord turns
    its frames upright for the detections, so the annotated video and the thumbnails are cut
    from frames turned the same way (they were the stored ones, of another size: the whole
    render piece failed, and the video had neither)."""
    import os
    import subprocess
    import sys

    root = tmp_path / "in"
    root.mkdir()
    write_video(tmp_path / "upright.mp4", scene, 24, ffmpeg=ffmpeg, gop=12)
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-i", str(tmp_path / "upright.mp4"), "-vf", "transpose=2",
                    "-c:v", "libx264", "-g", "12", str(tmp_path / "sideways.mp4")], check=True)
    phone = root / "phone.mp4"  # shown turned 90 degrees clockwise: upright again
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-display_rotation", "-90", "-i", str(tmp_path / "sideways.mp4"),
                    "-c", "copy", str(phone)], check=True)
    source = decord.VideoReader(str(phone))
    shown = source[0].asnumpy()
    assert shown.shape[:2] == (scene.height, scene.width)  # decord turns it

    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, "-c", "from jobs.cli.main import app; app()", "run", str(root), "--out", str(out),
         "--weights", str(caffe_weights), "--annotate"],
        env=dict(os.environ), capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "failed" not in proc.stderr, proc.stderr[-3000:]
    videos = pd.read_parquet(out / "videos.parquet").set_index("video")
    assert (videos.loc["phone.mp4", ["width", "height"]] == [scene.width, scene.height]).all()
    assert videos.loc["phone.mp4", "faces"] > 0
    annotated = decord.VideoReader(str(out / "annotated" / "phone.mp4.mp4"))
    assert len(annotated) == 24
    for pos in (0, 23):  # the source frame as shown, below the banner
        diff = np.abs(annotated[pos].asnumpy()[100:].astype(int) - source[pos].asnumpy()[100:].astype(int))
        assert diff.mean() < 8, (pos, diff.mean())
    tracks = pd.read_parquet(out / "tracks.parquet")
    unmasked = tracks[tracks.label == "NoMask"]
    assert len(unmasked) and unmasked.thumbnail.notna().all()
