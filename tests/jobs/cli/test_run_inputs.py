"""``maskjobs run`` over messy file sets (issue 17, items 1 and 3): names that are not UTF-8,
the output inside the input folder, the same name in two folders. Real Ray, videos, Parquet."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from benchmarks.videogen import Scene, write_video
from jobs.cli.main import app

pytestmark = pytest.mark.slow  # every test runs `maskjobs run` on real videos and a real local Ray


def _run(*args: str):
    return CliRunner().invoke(app, ["run", *args], catch_exceptions=False)


def test_a_name_that_is_not_utf8_is_processed_and_escaped_and_the_output_never_feeds_back(
    tmp_path: Path, scene: Scene, ffmpeg: str, caffe_weights: Path
) -> None:
    vids = tmp_path / "vids"
    (vids / "cams1").mkdir(parents=True)
    (vids / "cams2").mkdir()
    latin1 = os.fsdecode(os.path.join(os.fsencode(vids), b"caf\xe9.mp4"))  # a Latin-1 NAS export
    write_video(Path(latin1), scene, 30, ffmpeg=ffmpeg, gop=10)
    write_video(vids / "cams1" / "cam.mp4", scene, 20, ffmpeg=ffmpeg, gop=10)
    write_video(vids / "cams2" / "cam.mp4", scene, 24, ffmpeg=ffmpeg, gop=10)
    (vids / "._cam.mp4").write_bytes(b"\x00\x05\x16\x07AppleDouble metadata")
    out = vids / "results"  # --out inside the input folder
    args = [str(vids), "--out", str(out), "--weights", str(caffe_weights), "--annotate"]

    first = _run(*args)
    assert first.exit_code == 0, first.output
    assert "Traceback" not in first.output
    videos = pd.read_parquet(out / "videos.parquet").set_index("video")
    assert sorted(videos.index) == ["caf\\xe9.mp4", "cams1/cam.mp4", "cams2/cam.mp4"]
    assert (videos.status == "done").all(), videos.error.to_dict()
    assert videos.loc["caf\\xe9.mp4", "frames_processed"] == 30
    assert videos.loc["caf\\xe9.mp4", "path"] == str(vids / "caf\\xe9.mp4")
    assert videos.loc["caf\\xe9.mp4", "faces"] > 0
    frames = pq.read_table(out / "frames").to_pandas()
    assert (frames.video == "caf\\xe9.mp4").sum() == 30
    assert (out / "annotated" / "caf\\xe9.mp4.mp4").is_file()

    # the annotated MP4s now sit inside the input folder: a rerun must not take them as inputs;
    # and what a crash or a disk error leaves (item 11) costs only what it damaged: an empty
    # manifest, a folder written aside, a shard file cut short
    (out / "annotated" / "manifest.json").write_text("")
    (out / "annotated" / ".tmp-left" / "inner").mkdir(parents=True)
    (out / "annotated" / ".tmp-left" / "inner" / "x.mp4").write_bytes(b"half")
    part = sorted((out / "frames").glob("part-*.parquet"))[0]
    lost = pq.read_table(part).num_rows
    part.write_bytes(part.read_bytes()[:100])
    again = _run(*args)
    assert again.exit_code == 0, again.output  # JSONDecodeError / "cannot write the output here" before
    assert sorted(pd.read_parquet(out / "videos.parquet").video) == sorted(videos.index)
    frames = pq.read_table(out / "frames", columns=["video", "frame"]).to_pandas()
    assert len(frames) == 30 + 20 + 24 and not frames.duplicated().any()  # the cut file's frames redone
    assert len(list((out / "quarantine").iterdir())) == 1 and lost > 0
    assert len(list((out / "annotated").glob("manifest.json.corrupt-*"))) == 1
    manifest = json.loads((out / "annotated" / "manifest.json").read_text())
    assert sorted(manifest) == sorted(videos.index)  # drawn again, every one


def test_a_transport_stream_gives_the_detections_of_the_stream_it_carries(
    tmp_path: Path, scene: Scene, ffmpeg: str, caffe_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An NVR's ``.ts`` export (decord alone reads it one GOP late: ``jobs.remux``), and a
    second one whose name does not say so, against the MP4 holding the same packets: every
    frame's detections equal, at every frame and sampled, and no copy left behind. An old
    DVR's AVI beside them gets its frames' times (decord alone: -3.07e17 s). A clip cut from the
    MP4 without re-encoding (an edit list hiding frames 30-39; decord alone counts them, and its
    seeks and reads in order disagree) gives the MP4's rows from frame 40 on, 1.6 s earlier."""
    import subprocess

    vids = tmp_path / "vids"
    vids.mkdir()
    write_video(vids / "cam.mp4", scene, 90, ffmpeg=ffmpeg, codec="h264-main", gop=30)
    for name, extra in (("cam.ts", []), ("export.mp4", ["-f", "mpegts"])):
        subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-i", str(vids / "cam.mp4"), "-c", "copy", *extra,
                        str(vids / name)], check=True)
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-i", str(vids / "cam.mp4"), "-c:v", "libx264", "-preset",
                    "veryfast", "-g", "30", str(vids / "dvr.avi")], check=True)
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-ss", "1.6", "-i", str(vids / "cam.mp4"), "-c", "copy",
                    str(vids / "clip.mp4")], check=True)
    stage = tmp_path / "stage"
    monkeypatch.setenv("MASKJOBS_STAGE_DIR", str(stage))  # inherited by the embedded Ray's workers
    config = tmp_path / "job.yaml"
    config.write_text("planning:\n  shard_frames: 40\n  pack_frames: 40\n")  # shards that start with a seek
    for flags in ([], ["--stride", "4"]):
        out = tmp_path / f"out{len(flags)}"
        result = _run(str(vids), "--out", str(out), "--weights", str(caffe_weights), "--config", str(config), *flags)
        assert result.exit_code == 0, result.output
        frames = pd.read_parquet(out / "frames", columns=["video", "frame", "time_s", "detections"])
        by_video = {v: f.sort_values("frame").reset_index(drop=True) for v, f in frames.groupby("video")}
        assert set(by_video) == {"cam.mp4", "cam.ts", "export.mp4", "dvr.avi", "clip.mp4"}
        avi = by_video["dvr.avi"]
        assert avi.frame.tolist() == by_video["cam.mp4"].frame.tolist()
        assert np.abs(avi.time_s - avi.frame / 25).max() < 0.002
        videos = pd.read_parquet(out / "videos.parquet").set_index("video")
        assert abs(videos.loc["dvr.avi", "duration_s"] - 90 / 25) < 0.05
        mp4 = by_video["cam.mp4"]
        assert len(mp4) == (90 if not flags else 23) and sum(len(d) for d in mp4.detections) > 0
        clip = by_video["clip.mp4"].assign(frame=lambda f: f.frame + 40, time_s=lambda f: f.time_s + 1.6)
        assert abs(videos.loc["clip.mp4", "frames_total"] - 50) == 0
        for other, ts in (("cam.ts", by_video["cam.ts"]), ("export.mp4", by_video["export.mp4"]), ("clip.mp4", clip)):
            ref = mp4[mp4.frame >= ts.frame.min()]
            assert ts.frame.tolist() == ref.frame.tolist(), other
            assert ts.time_s.round(3).tolist() == ref.time_s.round(3).tolist(), other
            for a, b in zip(ref.detections, ts.detections):
                assert [(d["label"], round(d["x1"], 2), round(d["y1"], 2), round(d["score"], 4)) for d in a] == [
                    (d["label"], round(d["x1"], 2), round(d["y1"], 2), round(d["score"], 4)) for d in b]
        assert not [p for p in stage.iterdir() if p.suffix == ".mkv"]  # the copies went with the job


def test_a_broken_video_with_a_newline_in_its_name_is_one_error_line_and_the_rest_is_done(
    tmp_path: Path, scene: Scene, ffmpeg: str, caffe_weights: Path
) -> None:
    """The error line, the summary's row and the video's id each stay one line: the name's
    newline is written ``\\x0a`` (decord's own message, which names the file, was cut there)."""
    vids = tmp_path / "vids"
    vids.mkdir()
    (vids / "bad\nname.mp4").write_text("not a video\n" * 50)
    write_video(vids / "ok.mp4", scene, 12, ffmpeg=ffmpeg, gop=6)
    result = _run(str(vids), "--out", str(tmp_path / "out"), "--weights", str(caffe_weights))
    assert result.exit_code == 1, result.output  # EXIT_VIDEOS_FAILED
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    shown = str(vids / "bad\\x0aname.mp4")
    assert len(errors) == 1 and errors[0].startswith(f"error: {shown}: not a readable video ("), result.output
    assert errors[0].endswith(")") and shown in errors[0][len(shown) + 8:]  # decord's line names it, whole
    videos = pd.read_parquet(tmp_path / "out" / "videos.parquet").set_index("video")
    assert videos.status.to_dict() == {"bad\\x0aname.mp4": "failed", "ok.mp4": "done"}
    assert videos.loc["ok.mp4", "frames_processed"] == 12


def test_a_job_whose_every_video_is_broken_reports_each_and_a_rerun_does_the_same(
    tmp_path: Path, ffmpeg: str, caffe_weights: Path
) -> None:
    """No frame committed at all: the coverage pass read an empty table without the
    detections' fields, and the job crashed (exit 3, ``KeyError: 'x2'``) before
    ``videos.parquet``, with no line naming any file; every rerun crashed again."""
    import subprocess

    vids = tmp_path / "vids"
    vids.mkdir()
    (vids / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, np.uint8).tobytes())
    (vids / "empty.mp4").touch()
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-f", "lavfi", "-i", "sine=d=1", "-c:a", "aac",
                    str(vids / "sound.mp4")], check=True)
    args = [str(vids), "--out", str(tmp_path / "out"), "--weights", str(caffe_weights)]
    for attempt in range(2):
        result = _run(*args)
        assert result.exit_code == 1, result.output  # EXIT_VIDEOS_FAILED, not 3
        assert "Traceback" not in result.output and "crashed" not in result.output
        assert "no video readable" in result.stdout
        errors = sorted(line for line in result.output.splitlines() if line.startswith("error: "))
        assert [e.split(": ")[1] for e in errors] == [str(vids / n) for n in ("empty.mp4", "random.mp4", "sound.mp4")]
        assert errors[0].endswith("the file is empty") and errors[2].endswith("no video stream (a sound recording?)")
        videos = pd.read_parquet(tmp_path / "out" / "videos.parquet").set_index("video")
        assert videos.status.to_dict() == {"empty.mp4": "failed", "random.mp4": "failed", "sound.mp4": "failed"}
        assert pq.read_table(tmp_path / "out" / "tracks.parquet").num_rows == 0


def test_a_32_pixel_camera_clip_is_done_beside_a_broken_file(tmp_path: Path, ffmpeg: str, caffe_weights: Path) -> None:
    """decord2 pads the rows of frames 32 px wide (``jobs.video.frame_array``): every shard of
    such a clip failed with "expected an (H, W, 3) picture, got shape (32, 32, 6)"."""
    import subprocess

    vids = tmp_path / "vids"
    vids.mkdir()
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=32x32:rate=15", "-t", "2",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(vids / "tiny.mp4")], check=True)
    (vids / "broken.mp4").write_text("not a video\n" * 50)
    result = _run(str(vids), "--out", str(tmp_path / "out"), "--weights", str(caffe_weights))
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {vids / 'broken.mp4'}: not a readable video"), errors
    videos = pd.read_parquet(tmp_path / "out" / "videos.parquet").set_index("video")
    assert videos.status.to_dict() == {"broken.mp4": "failed", "tiny.mp4": "done"}
    assert videos.loc["tiny.mp4", "frames_processed"] == 30 and videos.loc["tiny.mp4", "width"] == 32


def test_a_name_that_is_not_utf8_given_on_the_command_line_is_processed(
    tmp_path: Path, scene: Scene, ffmpeg: str, caffe_weights: Path
) -> None:
    """The name is in the process's own command line, which ``ray.init`` sends to the GCS as
    UTF-8 (``jobs.pipeline.session._encodable_entrypoint``): Ray failed to start
    (``UnicodeEncodeError``, then 60 s waiting for a GCS that was gone) and no video was run.
    A real process: CliRunner's command line is pytest's."""
    import subprocess
    import sys

    vids = tmp_path / "vids"
    vids.mkdir()
    latin1 = os.path.join(os.fsencode(vids), b"caf\xe9.mp4")
    write_video(Path(os.fsdecode(latin1)), scene, 12, ffmpeg=ffmpeg, gop=6)
    write_video(vids / "ok.mp4", scene, 10, ffmpeg=ffmpeg, gop=5)
    out = tmp_path / "out"
    cmd = [os.fsencode(sys.executable), b"-m", b"jobs", b"run", latin1, os.fsencode(vids / "ok.mp4"),
           b"--out", os.fsencode(out), b"--weights", os.fsencode(caffe_weights)]
    proc = subprocess.run(cmd, capture_output=True, timeout=120)
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, stderr[-3000:]
    assert "UnicodeEncodeError" not in stderr and "not used" not in stderr  # the patched start was kept
    videos = pd.read_parquet(out / "videos.parquet").set_index("video")
    assert videos.frames_processed.to_dict() == {"caf\\xe9.mp4": 12, "ok.mp4": 10}
    assert (videos.status == "done").all()
