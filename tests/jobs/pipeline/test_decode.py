"""Decoding shards: forward reading returns exactly the frames decord's random access does."""

from __future__ import annotations

import os

import decord
import numpy as np
import pytest

from detector.preprocess import resize_rgb
from jobs.pipeline.decode import Started, decode_shard
from jobs.pipeline.plan import Segment, Shard
from jobs.video import read_frames

pytestmark = pytest.mark.slow  # decodes the generated videos

SAMPLINGS = {
    "every frame": lambda n: np.arange(n),
    "stride 3": lambda n: np.arange(0, n, 3),
    "fps-like steps": lambda n: np.unique(np.floor(np.arange(0, n, 7.3)).astype(np.int64)),
    "random": lambda n: np.sort(np.random.default_rng(n).choice(n, min(n, 12), replace=False)),
    "second half": lambda n: np.arange(n // 2, n),
}


@pytest.mark.parametrize("video", ["long.mp4", "cams/north/hevc.mkv", "cams/vp9.webm", "mpeg4.avi", "mjpeg.mov"])
@pytest.mark.parametrize("sampling", sorted(SAMPLINGS))
def test_read_frames_equals_random_access(video_set, video: str, sampling: str) -> None:
    path = str(video_set.root / video)
    ref = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    idx = SAMPLINGS[sampling](len(ref))
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    keys = np.asarray(reader.get_key_indices(), dtype=np.int64)
    got = [frame.copy() for frame in read_frames(reader, idx, keys)]
    assert len(got) == len(idx)
    for i, frame in zip(idx.tolist(), got):
        assert np.array_equal(frame, ref.get_batch([i]).asnumpy()[0]), f"{video} frame {i}"


def test_decode_shard_batches(video_set) -> None:
    path = str(video_set.root / "long.mp4")
    frames = tuple(range(5, 400, 7))
    shard = Shard("s", (Segment("long.mp4", path, frames),))
    items = list(decode_shard(shard, input_size=260, batch_size=16))
    assert isinstance(items[0], Started) and items[0].host == os.uname().nodename
    batches = items[1:]
    assert [len(b["frame"]) for b in batches] == [16, 16, 16, 9]
    got_idx = np.concatenate([b["frame"] for b in batches])
    assert got_idx.tolist() == list(frames)
    ref = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    want = np.stack([resize_rgb(ref.get_batch([i]).asnumpy()[0], 260) for i in frames])
    assert np.array_equal(np.concatenate([b["frames"] for b in batches]), want)
    stamps = ref.get_frame_timestamp(list(frames))[:, 0]
    assert np.allclose(np.concatenate([b["time_s"] for b in batches]), stamps)
    assert set(np.concatenate([b["width"] for b in batches]).tolist()) == {480}


def test_decode_shard_runs_opencv_on_one_thread_and_restores_it(video_set) -> None:
    import cv2

    cv2.setNumThreads(2)
    shard = Shard("s", (Segment("mjpeg.mov", str(video_set.root / "mjpeg.mov"), tuple(range(20))),))
    seen = []
    for item in decode_shard(shard, input_size=260, batch_size=8):
        seen.append(cv2.getNumThreads())
    assert seen and set(seen) == {1}  # while the task decodes (it holds one CPU)
    assert cv2.getNumThreads() == 2  # a caller in the same process gets its setting back


class _Recording:
    """A real decord reader whose seeks, skips and reads are recorded."""

    def __init__(self, reader) -> None:
        self.reader, self.calls = reader, []

    def seek_accurate(self, i: int) -> None:
        self.calls.append(("seek", i))
        self.reader.seek_accurate(i)

    def skip_frames(self, n: int) -> None:
        self.calls.append(("skip", n))
        self.reader.skip_frames(n)

    def next(self):
        self.calls.append(("next",))
        return self.reader.next()


def test_keyframes_decode_one_frame_each_and_nothing_else(video_set) -> None:
    """Reading only keyframes seeks to each and decodes it: no frame is skipped through
    (decoded and dropped), and each equals random access."""
    path = str(video_set.root / "long.mp4")
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    keys = np.asarray(reader.get_key_indices(), dtype=np.int64)
    assert len(keys) == 10
    spy = _Recording(reader)
    got = [frame.copy() for frame in read_frames(spy, keys, keys)]
    assert not any(c[0] == "skip" for c in spy.calls)
    assert spy.calls == [("next",)] + [c for k in keys[1:].tolist() for c in (("seek", k), ("next",))]
    ref = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    for k, frame in zip(keys.tolist(), got):
        assert np.array_equal(frame, ref.get_batch([k]).asnumpy()[0])


def test_sampled_frames_between_are_skipped_not_converted(video_set) -> None:
    """Every 7th frame inside a GOP: the frames between are passed with ``skip_frames``
    (decoded, never converted to RGB), and each batch says what its decoding cost."""
    path = str(video_set.root / "long.mp4")
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    spy = _Recording(reader)
    idx = np.arange(0, 35, 7)
    list(read_frames(spy, idx, np.asarray(reader.get_key_indices(), dtype=np.int64)))
    assert spy.calls == [("next",)] + [("skip", 6), ("next",)] * 4
    shard = Shard("s", (Segment("long.mp4", path, tuple(range(0, 400, 7))),))
    batches = [b for b in decode_shard(shard, input_size=260, batch_size=16) if not isinstance(b, Started)]
    cpu = np.concatenate([b["decode_cpu_s"] for b in batches])
    assert len(cpu) == len(range(0, 400, 7)) and (cpu > 0).all() and cpu.dtype == np.float32


def test_decode_shard_cuts_tiles(video_set) -> None:
    """With ``tiles``, every frame yields its whole picture and its tiles, as ``cut_tiles`` cuts them."""
    from detector.tiling import TileGrid, cut_tiles, tile_boxes

    path = str(video_set.root / "long.mp4")
    frames = (3, 10, 11, 40)
    shard = Shard("s", (Segment("long.mp4", path, frames),))
    grid = TileGrid(2, 3)
    batches = [b for b in decode_shard(shard, input_size=64, batch_size=3, tiles=grid) if not isinstance(b, Started)]
    assert [len(b["frame"]) for b in batches] == [3, 1]
    ref = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    boxes = tile_boxes(480, 272, grid)
    for b in batches:
        assert b["per_frame"].tolist() == [7] * len(b["frame"])
        assert b["frames"].shape == (7 * len(b["frame"]), 64, 64, 3)
        assert np.array_equal(b["tiles"], np.tile(boxes, (len(b["frame"]), 1)))
        for j, i in enumerate(b["frame"].tolist()):
            want = cut_tiles(ref.get_batch([i]).asnumpy()[0], boxes, 64)
            assert np.array_equal(b["frames"][7 * j : 7 * (j + 1)], want)
    plain = [b for b in decode_shard(shard, input_size=64, batch_size=3) if not isinstance(b, Started)]
    assert "tiles" not in plain[0] and plain[0]["frames"].shape == (3, 64, 64, 3)


@pytest.mark.parametrize("container", [".mkv", ".mp4"])
def test_sampled_shards_get_the_frames_decord_puts_out_at_their_index(scene, ffmpeg: str, tmp_path, container: str) -> None:
    """A sampled shard of HEVC (x265: an open GOP, frames shown before each keyframe) is read by
    PyAV, skipping non-reference frames (``jobs.sparse``): every sampled frame is the frame
    decord puts out at that index reading from the start. decord's own seek lands elsewhere
    there (its keyframe indices count packets in decoding order): frame 17 of this clip came
    back as frame 0 from Matroska and as frame 20 from MP4, and so on through the GOP."""
    import subprocess

    from benchmarks.videogen import Scene, write_video

    mkv = write_video(tmp_path / "hevc.mkv", Scene(scene.photos, width=320, height=192), 60, ffmpeg=ffmpeg,
                      codec="hevc", gop=20)
    path = mkv.with_suffix(container)
    if container != ".mkv":
        subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-i", str(mkv), "-c", "copy", str(path)], check=True)
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    every = reader.get_batch(list(range(len(reader)))).asnumpy()
    frames = tuple(range(1, len(every), 2))
    shard = Shard("s", (Segment("hevc", str(path), frames),))
    batches = [b for b in decode_shard(shard, input_size=96, batch_size=8) if not isinstance(b, Started)]
    assert np.concatenate([b["frame"] for b in batches]).tolist() == list(frames)
    got = np.concatenate([b["frames"] for b in batches])
    for k, i in enumerate(frames):
        assert np.array_equal(got[k], resize_rgb(every[i], 96)), f"frame {i}"
    assert (np.concatenate([b["decode_cpu_s"] for b in batches]) > 0).all()
