"""MPEG transport and program streams read through their Matroska copy (``jobs.remux``): the
frames of the stream they carry, where decord alone puts out the picture one GOP later (H.264 in
``.ts``) or a few frames off after a seek (MPEG-2's open GOPs, read by PyAV: ``jobs.sparse``)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import decord
import numpy as np
import pytest

from benchmarks.videogen import Scene, write_video
from jobs.pipeline.probe import probe_video
from jobs.remux import _Clock, _Start, remux_kind
from jobs.sparse import Tally, read_sampled
from jobs.stage import clear_stage
from jobs.video import VideoReadError, open_video

FRAMES, GOP = 120, 30


def _ffmpeg(ffmpeg: str, *args: str | Path) -> None:
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory, scene: Scene, ffmpeg: str) -> Path:
    """One H.264 stream (x264 veryfast: B-frames) in MP4, and the same packets in transport
    streams: plain, starting at 10 s, in 192-byte M2TS packets, and cut at 60%."""
    root = tmp_path_factory.mktemp("remux")
    small = Scene(scene.photos, width=320, height=192)
    src = write_video(root / "src.mp4", small, FRAMES, ffmpeg=ffmpeg, codec="h264-main", gop=GOP)
    _ffmpeg(ffmpeg, "-i", src, "-c", "copy", root / "plain.ts")
    _ffmpeg(ffmpeg, "-i", src, "-c", "copy", "-output_ts_offset", "10", root / "offset.ts")
    _ffmpeg(ffmpeg, "-i", src, "-c", "copy", "-mpegts_m2ts_mode", "1", "-f", "mpegts", root / "camera.m2ts")
    data = (root / "plain.ts").read_bytes()
    (root / "cut.ts").write_bytes(data[: int(len(data) * 0.6)])
    # two recordings joined end to end, the second's clock starting again (``cat a.ts b.ts``)
    _ffmpeg(ffmpeg, "-i", src, "-vf", "hflip", "-frames:v", "60", "-c:v", "libx264", "-preset", "veryfast",
            "-g", GOP, root / "second.ts")
    (root / "joined.ts").write_bytes(data + (root / "second.ts").read_bytes())
    _ffmpeg(ffmpeg, "-i", root / "second.ts", "-vf", "scale=160:96", "-c:v", "libx264", "-preset", "veryfast",
            "-g", GOP, root / "second-small.ts")
    (root / "joined-sizes.ts").write_bytes(data + (root / "second-small.ts").read_bytes())
    # MPEG-2 with B-frames and open GOPs (a DVR's or DVB's): in Matroska, a program stream, a transport stream
    _ffmpeg(ffmpeg, "-i", src, "-c:v", "mpeg2video", "-q:v", "4", "-bf", "2", "-g", GOP, root / "mpeg2.mkv")
    _ffmpeg(ffmpeg, "-i", root / "mpeg2.mkv", "-c", "copy", "-f", "mpeg", root / "dvr.mpg")
    _ffmpeg(ffmpeg, "-i", root / "mpeg2.mkv", "-c", "copy", root / "dvb.ts")
    _ffmpeg(ffmpeg, "-i", root / "mpeg2.mkv", "-c", "copy", "-f", "vob", root / "dvd.vob")
    # an old DVR's AVIs: H.264 and MPEG-4 part 2, both with B-frames
    _ffmpeg(ffmpeg, "-i", src, "-c:v", "libx264", "-preset", "veryfast", "-g", GOP, root / "h264.avi")
    _ffmpeg(ffmpeg, "-i", src, "-c:v", "mpeg4", "-q:v", "4", "-bf", "2", "-g", GOP, root / "mpeg4.avi")
    # an IP camera's Motion JPEG at 30 fps (the same frames: the source's times read as 30 fps)
    _ffmpeg(ffmpeg, "-r", "30", "-i", src, "-c:v", "mjpeg", "-q:v", "4", root / "mjpeg-30fps.avi")
    _ffmpeg(ffmpeg, "-r", "30", "-i", src, "-frames:v", "30", "-c:v", "mjpeg", "-q:v", "4", root / "mjpeg-1s.avi")
    # clips cut from a recording without re-encoding: MP4/MOV edit lists hiding the frames from the
    # keyframe before the cut (frame 50, 2 s in; the keyframe is frame 30), the last one ending 2 s
    # later; and the same cut in HEVC (x265's open GOPs, read through PyAV where reads seek)
    _ffmpeg(ffmpeg, "-ss", "2", "-i", src, "-c", "copy", root / "trimmed.mp4")
    _ffmpeg(ffmpeg, "-ss", "2", "-t", "2", "-i", src, "-c", "copy", root / "trimmed.mov")
    _ffmpeg(ffmpeg, "-i", src, "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", f"log-level=error:keyint={GOP}",
            root / "hevc.mp4")
    _ffmpeg(ffmpeg, "-ss", "2", "-i", root / "hevc.mp4", "-c", "copy", root / "trimmed-hevc.mp4")
    # recordings that start mid-GOP (a live capture, an export cut at a byte): H.264, HEVC with
    # open GOPs (leading frames that refer to the GOP cut off), MPEG-2 in a program stream, and
    # the H.264 one in MP4 with its leading frames kept (-copyinkf)
    _ffmpeg(ffmpeg, "-i", src, "-c:v", "libx265", "-preset", "ultrafast", "-x265-params",
            f"log-level=error:keyint={GOP}", "-f", "mpegts", root / "hevc.ts")
    for name, cut in (("plain.ts", "midgop.ts"), ("hevc.ts", "midgop-hevc.ts")):
        whole = (root / name).read_bytes()
        (root / cut).write_bytes(whole[int(len(whole) * 0.4) // 188 * 188:])
    whole = (root / "dvd.vob").read_bytes()
    (root / "midgop.vob").write_bytes(whole[whole.index(b"\x00\x00\x01\xba", int(len(whole) * 0.4)):])
    _ffmpeg(ffmpeg, "-i", root / "midgop.ts", "-c", "copy", "-copyinkf", root / "midgop.mp4")
    # the HEVC one copied as FFmpeg does by default: from its first keyframe, with the open GOP's
    # leading frames after it, which refer to the GOP cut off (decord puts the first at -0.1 s)
    for container in ("mp4", "mkv"):
        _ffmpeg(ffmpeg, "-i", root / "midgop-hevc.ts", "-c", "copy", root / f"midgop-hevc.{container}")
    return root


@pytest.fixture(autouse=True)
def _stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "stage"
    monkeypatch.setenv("MASKJOBS_STAGE_DIR", str(folder))
    return folder


def _source_frames(streams: Path) -> np.ndarray:
    """The MP4's frames, read by decord from the first (the stream every .ts here carries)."""
    reader = decord.VideoReader(str(streams / "src.mp4"), ctx=decord.cpu(0), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy()


@dataclass
class _Packet:
    """What :class:`jobs.remux._Start` and ``_Clock`` read of a PyAV packet."""

    pts: int | None
    dts: int | None = None
    is_keyframe: bool = False
    size: int = 1000


def _admitted(start: _Start, packets: list[_Packet]) -> list[int | None]:
    out = [p.pts for packet in packets for p in start.admit(packet)]
    return out + [p.pts for p in start.end()]


def test_packets_before_the_first_keyframe_and_shown_before_it_are_left_out() -> None:
    """Decoding order: two P-frames of the GOP cut off, the keyframe (pts 10), a leading B-frame
    shown before it (pts 9), then frames after it; later a restart of the clock is kept."""
    packets = [_Packet(5), _Packet(8), _Packet(10, is_keyframe=True), _Packet(9), _Packet(12), _Packet(11)]
    packets += [_Packet(pts) for pts in range(13, 40)] + [_Packet(0, is_keyframe=True), _Packet(2)]
    start = _Start()
    kept = _admitted(start, packets)
    assert kept == [10, 12, 11, *range(13, 40), 0, 2] and start.dropped == 3


def test_a_stream_whose_keyframes_are_not_flagged_keeps_every_packet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("jobs.remux._HOLD_BYTES", 5000)
    held_to_the_end = [_Packet(pts) for pts in range(3)]
    assert _admitted(_Start(), held_to_the_end) == [0, 1, 2]  # the stream ended first
    past_the_hold = [_Packet(pts) for pts in range(9)]
    assert _admitted(_Start(), past_the_hold) == list(range(9))  # given back at 6 packets, then passed on


def test_a_clock_that_starts_again_runs_on_past_every_frame_shown_before() -> None:
    """B-frames: presentation times up to 2 frames after decoding times; the second recording's
    clock starts at 0 again (and its decoding times one frame before 0)."""
    first = [_Packet(pts, dts) for pts, dts in [(2, 0), (6, 2), (4, 4), (10, 6), (8, 8)]]
    second = [_Packet(pts, dts) for pts, dts in [(0, -2), (4, 0), (2, 2)]]
    clock = _Clock()
    for packet in first + second:
        clock.run_on(packet)
    assert [(p.pts, p.dts) for p in first] == [(2, 0), (6, 2), (4, 4), (10, 6), (8, 8)]  # untouched
    dts = [p.dts for p in first + second]
    assert dts == sorted(dts) and min(p.pts for p in second) > max(p.pts for p in first)
    assert [p.pts - second[0].pts for p in second] == [0, 4, 2] and clock.restarts == 1


def test_streams_and_avi_are_recognised_by_their_bytes(streams: Path, tmp_path: Path) -> None:
    (tmp_path / "named.ts").write_bytes(b"not a transport stream" * 100)
    (tmp_path / "short.ts").write_bytes(bytes([0x47]) * 10)
    os.mkfifo(tmp_path / "live.ts")  # never opened: that would wait for a writer
    renamed = tmp_path / "recording.mp4"  # a stream's name does not decide
    renamed.write_bytes((streams / "plain.ts").read_bytes())
    kinds = {"plain.ts": "mpegts", "camera.m2ts": "mpegts", "dvb.ts": "mpegts", "dvr.mpg": "mpeg", "dvd.vob": "mpeg", "h264.avi": "avi",
             "mpeg4.avi": "avi", "src.mp4": None, "mpeg2.mkv": None, "missing.ts": None}
    assert {name: remux_kind(streams / name) for name in kinds} == kinds
    assert remux_kind(renamed) == "mpegts"
    assert [remux_kind(tmp_path / name) for name in ("named.ts", "short.ts", "live.ts")] == [None, None, None]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["plain.ts", "offset.ts", "camera.m2ts"])
def test_a_transport_stream_gives_the_frames_of_its_stream(streams: Path, name: str, _stage: Path) -> None:
    ref = _source_frames(streams)
    info = probe_video(str(streams / name))
    assert (info.frames_total, info.keyframes) == (FRAMES, tuple(range(0, FRAMES, GOP)))
    with open_video(streams / name) as video:
        assert Path(video.source).parent == _stage and video.source.endswith(".mkv")
        every = [image.copy() for image in video.read(np.arange(FRAMES))]
        assert video.reader.get_frame_timestamp(0)[0] == 0.0
    assert all(np.array_equal(a, b) for a, b in zip(every, ref))
    with open_video(streams / name) as video:  # a seek into the second GOP, as a shard starting there
        later = [image.copy() for image in video.read(np.arange(GOP + 7, 3 * GOP, 5))]
    assert all(np.array_equal(a, ref[i]) for a, i in zip(later, range(GOP + 7, 3 * GOP, 5)))
    sampled = np.arange(3, FRAMES, 7)
    tally = Tally()
    with open_video(streams / name) as video:  # PyAV skips non-reference frames in the copy
        got = [image.copy() for image in read_sampled(video, sampled, tally=tally)]
    assert tally.fallbacks == 0 and tally.yielded == len(sampled)
    assert all(np.array_equal(a, ref[i]) for a, i in zip(got, sampled.tolist()))


@pytest.mark.slow
def test_the_copy_is_made_once_and_cleared(streams: Path, _stage: Path) -> None:
    with open_video(streams / "plain.ts") as first:
        copy = Path(first.source)
        made = copy.stat().st_mtime_ns
        with open_video(streams / "plain.ts") as second:  # another reader on the node shares it
            assert second.source == first.source
        assert clear_stage(_stage) == 0 and copy.exists()  # being read: kept
    with open_video(streams / "plain.ts") as again:
        assert again.source == str(copy) and copy.stat().st_size > 0
    assert made <= copy.stat().st_mtime_ns
    assert clear_stage(_stage) > 0 and not copy.exists()


@pytest.mark.slow
def test_a_stream_cut_mid_write_keeps_the_frames_before_the_cut(streams: Path) -> None:
    ref = _source_frames(streams)
    with open_video(streams / "cut.ts") as video:
        n = len(video)
        assert 0 < n < FRAMES
        got = [image.copy() for image in video.read(np.arange(n - 2))]  # the last may be incomplete
    assert all(np.array_equal(a, b) for a, b in zip(got, ref))


@pytest.mark.slow
def test_transport_streams_joined_end_to_end_give_every_frame_of_both(streams: Path, _stage: Path) -> None:
    """The second recording's clock starts again at the join, which Matroska cannot hold: the
    copy ended there and its 60 frames were lost (a warning in a log, the job green). Its
    times now run on from the first's; the frames are FFmpeg's (OpenCV's) in order, read in
    order, sampled, and by a shard's seek into the second recording."""
    ref = _opencv_frames(streams / "joined.ts")
    assert len(ref) == FRAMES + 60
    info = probe_video(str(streams / "joined.ts"))
    assert info.frames_total == len(ref) and GOP * 4 in info.keyframes
    with open_video(streams / "joined.ts") as video:
        times = video.timestamps(np.arange(len(ref)))
    assert (np.diff(times) > 0).all() and times[FRAMES] - times[FRAMES - 1] < 0.25  # on, not back to 0
    for frames in (np.arange(len(ref)), np.arange(3, len(ref), 7), np.arange(FRAMES + 7, FRAMES + 50)):
        with open_video(streams / "joined.ts") as video:
            got = [image.copy() for image in read_sampled(video, frames)]
        assert len(got) == len(frames) and all(_is_frame(a, ref, i) for a, i in zip(got, frames.tolist()))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["midgop.ts", "midgop-hevc.ts", "midgop.vob", "midgop.mp4", "midgop-hevc.mp4", "midgop-hevc.mkv"]
)
def test_a_recording_that_starts_mid_gop_gives_the_frames_ffmpeg_shows(streams: Path, name: str) -> None:
    """FFmpeg (OpenCV, players) starts at the first keyframe; decord alone counted the frames
    before it (and an open GOP's leading frames) at the start of its index, failed a seek
    before its first keyframe ("decoding failed at frame 3") and put every frame at the wrong
    index. Through the copy, without them: OpenCV's frames at their index, read in order,
    sampled, and by a shard's seek."""
    path = streams / name
    ref = _opencv_frames(path)
    info = probe_video(str(path))
    assert 0 < info.frames_total == len(ref) < FRAMES and info.keyframes[0] == 0 and info.copied
    reads = (np.arange(len(ref)), np.arange(3, len(ref), 7), np.arange(info.keyframes[1], len(ref)))
    for frames in reads:
        with open_video(path) as video:
            got = [image.copy() for image in read_sampled(video, frames)]
        assert len(got) == len(frames) and all(_is_frame(a, ref, i) for a, i in zip(got, frames.tolist()))


@pytest.mark.slow
def test_recordings_of_two_sizes_joined_give_every_frame_at_the_first_size(streams: Path) -> None:
    """decord (and OpenCV) scale the second recording's pictures to the first's size; PyAV's
    skipping put them out at their own, so a batch mixed two sizes. It now leaves the frames from
    the change on to decord."""
    ref = _opencv_frames(streams / "joined-sizes.ts")
    frames = np.arange(3, len(ref), 7)
    tally = Tally()
    with open_video(streams / "joined-sizes.ts") as video:
        got = [image.copy() for image in read_sampled(video, frames, tally=tally)]
    assert len(ref) == FRAMES + 60 and len(got) == len(frames) and tally.fallbacks == 1
    assert {a.shape for a in got} == {ref[0].shape}
    assert all(_is_frame(a, ref, i, tolerance=3.0) for a, i in zip(got, frames.tolist()))  # scaled by another filter


@pytest.mark.slow
def test_a_file_that_only_looks_like_a_transport_stream_fails_naming_it(tmp_path: Path) -> None:
    fake = tmp_path / "fake.ts"
    fake.write_bytes((bytes([0x47]) + bytes(187)) * 40)  # sync bytes, no program in them
    with pytest.raises(VideoReadError) as caught:
        open_video(fake)
    assert str(caught.value).startswith(f"{fake}: ") and "\n" not in str(caught.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mpeg2.mkv", "dvr.mpg", "dvb.ts", "dvd.vob"])
def test_mpeg2_reads_that_seek_give_the_frames_at_their_index(streams: Path, name: str) -> None:
    """A shard starting at a keyframe, sampled frames and keyframes alone: decord's own seeks
    came out 2 frames off on each (its keyframe indices count packets in decoding order)."""
    reader = decord.VideoReader(str(streams / "mpeg2.mkv"), ctx=decord.cpu(0), num_threads=1)
    ref = reader.get_batch(list(range(len(reader)))).asnumpy()  # in order from the first: no seek
    with open_video(streams / name) as video:
        keyframes = video.keyframes()
        assert len(video) == FRAMES and len(keyframes) >= 3
    for what, frames, got in _seeking_reads(streams / name, keyframes):
        assert len(got) == len(frames), what
        assert all(np.array_equal(a, ref[i]) for a, i in zip(got, frames.tolist())), what


def _seeking_reads(path: Path, keyframes: np.ndarray) -> Iterator[tuple[str, np.ndarray, list[np.ndarray]]]:
    """``(what, frames, images)`` of the reads that seek: a shard starting at the third
    keyframe, every 7th frame, the keyframes alone (each in its own open, as a task does)."""
    reads = {
        "a shard": np.arange(keyframes[2], min(FRAMES, keyframes[2] + 40)),
        "every 7th": np.arange(3, FRAMES, 7),
        "keyframes": np.asarray(keyframes),
    }
    for what, frames in reads.items():
        with open_video(path) as video:
            yield what, frames, [image.copy() for image in read_sampled(video, frames)]


def _opencv_frames(path: Path) -> list[np.ndarray]:
    """Every frame FFmpeg decodes in order (OpenCV's reader: no seek), RGB."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            return out
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.int16))


def _is_frame(image: np.ndarray, ref: list[np.ndarray], i: int, *, tolerance: float = 1.0) -> bool:
    """``image`` is frame ``i`` of ``ref``: nearer it than its neighbours, and within
    ``tolerance`` grey levels on average."""
    near = {j: float(np.abs(image.astype(np.int16) - ref[j]).mean()) for j in range(max(0, i - 4), min(len(ref), i + 5))}
    return min(near, key=near.get) == i and near[i] < tolerance


@pytest.mark.slow
@pytest.mark.parametrize(("name", "fps"), [("h264.avi", 25), ("mpeg4.avi", 25), ("mjpeg-30fps.avi", 30)])
def test_an_avi_gives_its_frames_and_their_times(streams: Path, name: str, fps: int) -> None:
    """decord alone gave every frame -3.07e17 s, missed its seeks, and (MPEG-4) failed on the
    last frames of a read to the end. Motion JPEG's copy had no frame durations: the video
    ended where its last frame starts, one frame short."""
    ref = _opencv_frames(streams / name)
    info = probe_video(str(streams / name))
    assert info.frames_total == len(ref) == FRAMES and abs(info.duration_s - FRAMES / fps) < 0.002
    with open_video(streams / name) as video:
        keyframes = video.keyframes()
        every = [image.copy() for image in video.read(np.arange(FRAMES))]
        times = video.timestamps(np.arange(FRAMES))
    assert np.abs(times - np.arange(FRAMES) / fps).max() < 0.002  # Matroska keeps milliseconds
    assert all(_is_frame(a, ref, i) for i, a in enumerate(every))
    for what, frames, got in _seeking_reads(streams / name, keyframes):
        assert len(got) == len(frames) and all(_is_frame(a, ref, i) for a, i in zip(got, frames.tolist())), what


@pytest.mark.slow
def test_a_one_second_avi_lasts_to_the_end_of_its_last_frame(streams: Path, _stage: Path) -> None:
    """A short AVI's copy had no frame durations (Matroska's muxer wrote none for it, and no
    default): the video ended where its last frame starts, 0.967 s for 30 frames at 30 fps,
    and its sampling rate read 31.0 frames a second."""
    ref = _opencv_frames(streams / "mjpeg-1s.avi")
    info = probe_video(str(streams / "mjpeg-1s.avi"))
    assert info.frames_total == len(ref) == 30 and info.fps == 30
    assert abs(info.duration_s - 1.0) < 0.002, info.duration_s


@pytest.mark.slow
def test_a_transport_stream_in_object_storage_is_copied_from_its_staged_copy(
    streams: Path, s3_server, _stage: Path
) -> None:
    """Footage in a bucket: the object is staged, then its Matroska copy is made from the staged
    file; both are held while it is read, and both go with the stage."""
    s3_server.put("remux/cam.ts", (streams / "plain.ts").read_bytes())
    ref = _source_frames(streams)
    uri = s3_server.uri("remux/cam.ts")
    assert probe_video(uri).frames_total == FRAMES
    with open_video(uri) as video:
        assert video.path.startswith("s3://") and "testing:testing" not in video.path  # no credentials shown
        assert video.source.endswith(".mkv") and Path(video.source).parent == _stage
        got = [image.copy() for image in video.read(np.arange(GOP + 1, FRAMES, 9))]
        assert sorted(p.suffix for p in _stage.iterdir() if not p.name.endswith(".lock")) == [".mkv", ".ts"]
    assert all(np.array_equal(a, ref[i]) for a, i in zip(got, range(GOP + 1, FRAMES, 9)))
    assert clear_stage(_stage) > 0 and not [p for p in _stage.iterdir() if not p.name.endswith(".lock")]


def _pyav_frames(path: Path) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """What FFmpeg shows of ``path`` (players, OpenCV): every frame in order as RGB, its start
    time in seconds, and the indices of the keyframes."""
    import av

    with av.open(str(path)) as container:
        decoded = [(f.to_ndarray(format="rgb24"), float(f.time), f.key_frame) for f in container.decode(video=0)]
    return np.stack([d[0] for d in decoded]), np.array([d[1] for d in decoded]), [i for i, d in enumerate(decoded) if d[2]]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["trimmed.mp4", "trimmed.mov", "trimmed-hevc.mp4"])
def test_an_edit_list_that_hides_frames_gives_the_frames_ffmpeg_shows(streams: Path, name: str, _stage: Path) -> None:
    """decord alone counted the hidden frames (120 - 30 where FFmpeg shows 70), put out the shown
    ones then the last picture again reading in order, landed a seek to frame N on packet N, and
    started the times at -0.8 s. Through the copy, with the hidden frames left out: FFmpeg's
    frames, count and times, read in order, by a shard's seek, sampled, and keyframes alone."""
    path = streams / name
    ref, times, keys = _pyav_frames(path)
    source = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    assert len(source) > len(ref) and source.get_frame_timestamp(0)[0] < 0  # what decord alone says
    info = probe_video(str(path))
    assert info.copied and info.frames_total == len(ref) and abs(info.duration_s - len(ref) / 25) < 0.05
    with open_video(path) as video:  # frames 30-49 hidden (x265's undecodable leading frame left out of the copy)
        assert video.lead == 20 and len(video) == len(ref) and video.source.endswith(".mkv")
        every = [image.copy() for image in read_sampled(video, np.arange(len(ref)))]
        stamps = video.timestamps(np.arange(len(ref)))
        keyframes = video.keyframes()
    assert len(every) == len(ref) and all(np.array_equal(a, b) for a, b in zip(every, ref))
    assert np.abs(stamps - times).max() < 0.001  # Matroska keeps milliseconds
    if "hevc" not in name:  # decord's HEVC keyframe indices count packets in decoding order (jobs/sparse.py)
        assert keyframes.tolist() == keys
    reads = {
        "a shard": np.arange(keyframes[1], min(len(ref), keyframes[1] + 25)),
        "every 7th": np.arange(3, len(ref), 7),
        "keyframes": keyframes,
    }
    for what, frames in reads.items():
        with open_video(path) as video:
            got = [image.copy() for image in read_sampled(video, frames)]
        assert len(got) == len(frames) and all(np.array_equal(a, ref[i]) for a, i in zip(got, frames.tolist())), what
    assert clear_stage(_stage) > 0


def test_an_mp4_that_hides_nothing_is_read_as_it_is(streams: Path, _stage: Path) -> None:
    """x264's B-frames put an edit list in every MP4 FFmpeg writes; it hides no frame: no copy."""
    with open_video(streams / "src.mp4") as video:
        assert (video.source, video.lead, len(video)) == (str(streams / "src.mp4"), 0, FRAMES)
    assert not _stage.exists() or not list(_stage.iterdir())


@pytest.mark.slow
def test_a_copy_that_does_not_fit_the_stage_fails_a_stream_and_leaves_an_mp4_as_it_is(
    streams: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """decord's every frame of a .ts would be another moment: it fails, naming the setting. An
    MP4 that hides frames is read as before the copy existed, with a warning."""
    monkeypatch.setenv("MASKJOBS_STAGE_MAX_GB", "0.000001")
    with pytest.raises(VideoReadError, match="do not fit the stage cache .*MASKJOBS_STAGE_MAX_GB"):
        open_video(streams / "plain.ts")
    with caplog.at_level("WARNING", logger="jobs.video"), open_video(streams / "trimmed.mp4") as video:
        assert (video.source, video.lead, len(video)) == (str(streams / "trimmed.mp4"), 0, 90)
    assert "trimmed.mp4: read as it is" in caplog.text


@pytest.mark.slow
def test_a_cut_clip_and_a_mid_gop_recording_in_a_bucket_give_the_frames_ffmpeg_shows(
    streams: Path, s3_server, _stage: Path
) -> None:
    """The object is staged, then the staged file is checked and copied as a local one is."""
    for name in ("trimmed.mp4", "midgop.ts"):
        ref, _, _ = _pyav_frames(streams / name)
        s3_server.put(f"cams/{name}", (streams / name).read_bytes())
        uri = s3_server.uri(f"cams/{name}")
        assert probe_video(uri).frames_total == len(ref) < FRAMES
        frames = np.arange(3, len(ref), 7)
        with open_video(uri) as video:
            assert video.source.endswith(".mkv") and Path(video.source).parent == _stage
            got = [image.copy() for image in read_sampled(video, frames)]
        assert len(got) == len(frames) and all(np.array_equal(a, ref[i]) for a, i in zip(got, frames.tolist()))
