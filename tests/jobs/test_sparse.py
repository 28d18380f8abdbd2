"""Sampled frames with non-reference frames skipped (``jobs.sparse``, issue 18 item 2): the same
frames as decord's, bit for bit, fewer frames decoded, and decord wherever PyAV cannot vouch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import decord
import numpy as np
import pytest

from benchmarks.videogen import Scene, write_video
from jobs.sparse import Tally, _seeks, is_sparse, read_sampled
from jobs.video import VideoReadError, open_video

pytestmark = pytest.mark.slow  # decodes generated videos

FRAMES, GOP = 150, 30

# Read by PyAV, skipping: H.264 with B-frames (x264 veryfast: 3 B-frames, b-pyramid) and
# without (ultrafast), HEVC with an open GOP's leading frames (x265 ultrafast) in Matroska and MP4,
# MPEG-4 part 2 with B-frames, a stream starting at 10 s, frames dropped (variable frame rate).
SKIPPING = ["h264-b.mp4", "h264-nob.mp4", "hevc.mkv", "hevc.mp4", "mpeg4-b.mp4", "offset.mp4", "vfr.mp4", "vfr.mkv",
            "mpeg4.avi"]  # an AVI: through its Matroska copy (jobs/remux.py)
REORDERED = ("hevc", "mpeg4")  # clips whose every-frame reads after a seek go through PyAV too
# Read by decord: what PyAV's side cannot vouch for (jobs/sparse.py's docstring says why).
DECORD = ["rotated.mp4", "hevc-10bit.mkv"]  # MPEG streams, AVI, MP4 edit lists: test_remux.py


def _ffmpeg(ffmpeg: str, *args: str | Path) -> None:
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, scene: Scene, ffmpeg: str) -> Path:
    root = tmp_path_factory.mktemp("sparse")
    small = Scene(scene.photos, width=320, height=192)
    write_video(root / "h264-b.mp4", small, FRAMES, ffmpeg=ffmpeg, codec="h264-main", gop=GOP)
    write_video(root / "h264-nob.mp4", small, FRAMES, ffmpeg=ffmpeg, codec="h264", gop=GOP)
    write_video(root / "hevc.mkv", small, FRAMES, ffmpeg=ffmpeg, codec="hevc", gop=GOP)
    write_video(root / "mpeg4.avi", small, 60, ffmpeg=ffmpeg, codec="mpeg4", gop=GOP)
    src = root / "h264-b.mp4"
    _ffmpeg(ffmpeg, "-i", root / "hevc.mkv", "-c", "copy", root / "hevc.mp4")
    _ffmpeg(ffmpeg, "-i", src, "-c:v", "mpeg4", "-q:v", "3", "-bf", "2", "-g", GOP, root / "mpeg4-b.mp4")
    _ffmpeg(ffmpeg, "-i", src, "-c", "copy", "-output_ts_offset", "10", root / "offset.mp4")
    _ffmpeg(ffmpeg, "-i", src, "-vf", r"select='not(eq(mod(n\,7)\,3))'", "-fps_mode", "vfr",
            "-c:v", "libx264", "-preset", "veryfast", "-g", GOP, root / "vfr.mp4")
    _ffmpeg(ffmpeg, "-i", root / "vfr.mp4", "-c", "copy", root / "vfr.mkv")
    _ffmpeg(ffmpeg, "-display_rotation", "90", "-i", src, "-c", "copy", root / "rotated.mp4")
    _ffmpeg(ffmpeg, "-i", src, "-frames:v", "60", "-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le",
            "-x265-params", "log-level=error", root / "hevc-10bit.mkv")
    return root


def _every_frame(path: Path) -> np.ndarray:
    """decord's frames, read in order from the first with no seek: (N, H, W, 3) uint8."""
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def _read(path: Path, frames: np.ndarray, tally: Tally) -> list[np.ndarray]:
    with open_video(path) as video:
        return list(read_sampled(video, frames, tally=tally))


def _samplings(n: int) -> dict[str, np.ndarray]:
    out = {}
    for stride in range(2, 32):
        for first in (0, GOP // 2 + 1, GOP - 1):  # from the start, mid-GOP, just before a keyframe
            out[f"stride {stride} from {first}"] = np.arange(first, n, stride)
        out[f"stride {stride}, a segment"] = np.arange(GOP + 3, min(n, 3 * GOP + 7), stride)
    for fps in (1.0, 2.0, 7.0, 12.5):  # --fps on 25 fps footage
        out[f"{fps} fps"] = np.unique(np.floor(np.arange(0, n, 25 / fps)).astype(np.int64))
    return out


@pytest.mark.parametrize("clip", SKIPPING)
def test_sampled_frames_are_decords_bit_for_bit(clips: Path, clip: str) -> None:
    path = clips / clip
    ref = _every_frame(path)
    with open_video(path) as video:
        keys = video.keyframes()
    total = Tally()
    for name, frames in _samplings(len(ref)).items():
        tally = Tally()
        got = _read(path, frames, tally)
        assert len(got) == len(frames), f"{clip} {name}"
        for i, image in zip(frames.tolist(), got):
            assert image.dtype == np.uint8 and np.array_equal(image, ref[i]), f"{clip} {name}: frame {i}"
        via_pyav = _via_pyav(clip, frames, keys)
        assert tally.fallbacks == 0 and tally.yielded == len(frames) * via_pyav, f"{clip} {name}: {tally}"
        total.decoded += tally.decoded
    assert total.decoded > 0


@pytest.mark.parametrize("clip", ["hevc.mkv", "hevc.mp4", "mpeg4-b.mp4", "h264-b.mp4"])
def test_every_frame_and_keyframes_after_a_seek_are_the_frames_at_their_index(clips: Path, clip: str) -> None:
    """An every-frame shard starts at a keyframe (or mid-GOP), and ``--keyframes`` reads
    keyframes alone: decord seeks to them. In open GOPs (x265) and MPEG-4 part 2 with
    B-frames its seek lands on another frame (frame 0 for frame 17 of hevc.mkv), so those
    reads go through PyAV, every frame decoded; H.264's every-frame reads stay with decord (no
    fallback), its keyframes alone go through PyAV (one packet each)."""
    path = clips / clip
    ref = _every_frame(path)
    with open_video(path) as video:
        keys = video.keyframes()
    reads = {f"from keyframe {k}": np.arange(k, min(len(ref), k + 40)) for k in keys.tolist() if k > 0}
    reads |= {"mid-GOP": np.arange(GOP + 7, 2 * GOP + 20), "keyframes": keys, "keyframes after the first": keys[1:]}
    for name, frames in reads.items():
        tally = Tally()
        got = _read(path, frames, tally)
        assert len(got) == len(frames), f"{clip} {name}"
        for i, image in zip(frames.tolist(), got):
            assert np.array_equal(image, ref[i]), f"{clip} {name}: frame {i}"
        assert tally.fallbacks == 0, f"{clip} {name}: {tally}"
        assert tally.yielded == len(frames) * _via_pyav(clip, frames, keys), f"{clip} {name}: {tally}"
        if name.startswith("keyframes") and not clip.startswith(REORDERED):  # one packet each, drained at once
            # (in open GOPs decord's keyframe indices count packets in decoding order: its
            # "keyframes" there are other frames, which take their GOP's frames before them)
            assert tally.decoded == len(frames), f"{clip} {name}: {tally}"


@pytest.mark.parametrize("clip", ["h264-b.mp4", "hevc.mkv", "mpeg4-b.mp4"])
def test_non_reference_frames_between_are_not_decoded(clips: Path, clip: str) -> None:
    """Every 15th frame of a clip with B-frames: fewer frames come out of the decoder than the
    sampled span holds (PyAV skipped them; a fallback to decord would decode none)."""
    frames = np.arange(2, FRAMES, 15)
    tally = Tally()
    assert len(_read(clips / clip, frames, tally)) == len(frames)
    spanned = int(frames[-1] - frames[0] + 1)
    assert tally.fallbacks == 0 and 0 < tally.decoded < 0.8 * spanned, (tally, spanned)


def _via_pyav(clip: str, frames: np.ndarray, keys: np.ndarray) -> bool:
    """Where :func:`read_sampled` reads by PyAV: sparse frames; and reads that seek when the
    codec's seeks miss in decord (HEVC, MPEG-4 part 2) or the frames are keyframes alone (one
    packet each, the decoder drained at once); decord reads the rest."""
    alone = bool(np.isin(frames, keys).all())
    return is_sparse(frames, keys) or (_seeks(frames, keys) and (clip.startswith(REORDERED) or alone))


def test_no_gap_or_the_first_keyframe_alone_is_left_to_decord(clips: Path) -> None:
    path = clips / "h264-b.mp4"
    ref = _every_frame(path)
    with open_video(path) as video:
        keys = video.keyframes()
    for frames in (np.arange(10, 60), keys[:1]):
        tally = Tally()
        got = _read(path, frames, tally)
        assert tally == Tally() and all(np.array_equal(a, ref[i]) for i, a in zip(frames.tolist(), got))


@pytest.mark.parametrize("clip", DECORD)
def test_what_pyav_cannot_vouch_for_is_read_by_decord(clips: Path, clip: str) -> None:
    path = clips / clip
    with open_video(path) as video:
        frames = np.arange(1, len(video), 7)
        ref = [image.copy() for image in video.read(frames)]
    tally = Tally()
    got = _read(path, frames, tally)
    assert tally.fallbacks == 1 and tally.yielded == 0, tally
    assert len(got) == len(ref) and all(np.array_equal(a, b) for a, b in zip(got, ref))


@pytest.fixture(scope="module")
def truncated(clips: Path, ffmpeg: str) -> Path:
    """h264-b.mp4 with its index first, cut at 60%: the index lists frames the file lacks."""
    fast = clips / "fast.mp4"
    _ffmpeg(ffmpeg, "-i", clips / "h264-b.mp4", "-c", "copy", "-movflags", "+faststart", fast)
    data = fast.read_bytes()
    path = clips / "truncated.mp4"
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


def test_a_truncated_file_keeps_the_frames_before_the_cut_and_names_where(clips: Path, truncated: Path) -> None:
    ref = _every_frame(clips / "h264-b.mp4")
    with open_video(truncated) as video:
        listed = len(video)  # what decord indexed of it: the frames a job plans
    assert GOP < listed < FRAMES
    frames = np.arange(1, listed, 4)
    tally, got = Tally(), []
    with open_video(truncated) as video, pytest.raises(VideoReadError) as info:
        for image in read_sampled(video, frames, tally=tally):
            got.append(image)
    assert len(got) > len(frames) // 2 and tally.yielded > len(frames) // 2, tally  # PyAV read up to the damage
    assert all(np.array_equal(a, ref[i]) for i, a in zip(frames.tolist(), got))
    assert info.value.path == str(truncated)
    assert info.value.cause.startswith(f"decoding failed at frame {frames[len(got)]} ("), info.value.cause


def test_a_file_pyav_cannot_open_is_decords_error(tmp_path: Path, clips: Path) -> None:
    """A video decord opens that is gone by the time PyAV would: decord reads it (from the reader
    it holds), one note, the same frames."""
    path = tmp_path / "gone.mp4"
    path.write_bytes((clips / "h264-b.mp4").read_bytes())
    frames = np.arange(0, FRAMES, 9)
    ref = _every_frame(path)
    tally = Tally()
    with open_video(path) as video:
        path.unlink()
        got = list(read_sampled(video, frames, tally=tally))
    assert tally.fallbacks == 1 and tally.yielded == 0
    assert all(np.array_equal(a, ref[i]) for i, a in zip(frames.tolist(), got))


def test_a_video_in_object_storage_is_read_from_its_staged_copy(
    clips: Path, s3_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MASKJOBS_STAGE_DIR", str(tmp_path / "stage"))
    s3_server.put("sparse/h264-b.mp4", (clips / "h264-b.mp4").read_bytes())
    ref = _every_frame(clips / "h264-b.mp4")
    frames = np.arange(3, FRAMES, 11)
    tally = Tally()
    with open_video(s3_server.uri("sparse/h264-b.mp4")) as video:
        assert video.source != video.path  # the staged copy
        got = list(read_sampled(video, frames, tally=tally))
    assert tally.fallbacks == 0 and tally.yielded == len(frames), tally
    assert all(np.array_equal(a, ref[i]) for i, a in zip(frames.tolist(), got))


def test_damage_after_frames_were_handed_over_is_an_error_naming_the_frame(clips: Path, tmp_path: Path) -> None:
    """A stretch of zeros mid-file: PyAV hands over the frames before it, then the error names
    the wanted frame it failed at, as ``OpenVideo.read`` does (the decode task reopens there)."""
    data = bytearray((clips / "h264-b.mp4").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = bytes(3000)
    path = tmp_path / "zeros.mp4"
    path.write_bytes(bytes(data))
    ref = _every_frame(clips / "h264-b.mp4")
    frames = np.arange(1, FRAMES, 3)
    tally, got = Tally(), []
    with open_video(path) as video, pytest.raises(VideoReadError) as info:
        for image in read_sampled(video, frames, tally=tally):
            got.append(image)
    assert tally.fallbacks == 0 and tally.yielded == len(got) > 5, tally
    assert all(np.array_equal(a, ref[i]) for i, a in zip(frames.tolist(), got))
    assert info.value.path == str(path)
    assert info.value.cause.startswith(f"decoding failed at frame {frames[len(got)]} ("), info.value.cause
