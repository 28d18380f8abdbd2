"""``maskjobs run`` over recordings cut off mid-write and inputs that change between runs (issue
17, items 2 and 4): real generated videos, a real local Ray, real Parquet."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from benchmarks.videogen import Scene, write_video
from jobs.cli.main import app

pytestmark = pytest.mark.slow  # every test runs `maskjobs run` on real videos and a real local Ray

SMALL_SHARDS = "planning:\n  shard_frames: 24\n  pack_frames: 24\n"


def _run(tmp_path: Path, weights: Path, *args: str):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(SMALL_SHARDS)
    return CliRunner().invoke(app, ["run", *args, "--weights", str(weights), "--config", str(cfg)],
                              catch_exceptions=False)


def _frames(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "frames", columns=["video", "frame"]).to_pandas()


def _decodable_prefix(path: Path) -> int:
    """How many frames decord decodes from the start before it fails, read without a pause (the
    test's own count; decord may report the damage early when it decodes ahead, so a floor)."""
    import decord

    reader = decord.VideoReader(str(path))
    n = 0
    try:
        for _ in range(len(reader)):
            reader.next()
            n += 1
    except Exception:  # decord raises RuntimeError / DECORDError at the damage
        pass
    return n


@pytest.fixture(scope="module")
def cut_videos(tmp_path_factory: pytest.TempPathFactory, scene: Scene, ffmpeg: str) -> Path:
    root = tmp_path_factory.mktemp("cut")
    write_video(root / "good.mp4", scene, 30, ffmpeg=ffmpeg, gop=8)
    # a camera that lost power: the index first (faststart), the tail of the data missing
    whole = root.parent / "whole.mp4"
    write_video(whole, scene, 120, ffmpeg=ffmpeg, gop=12)
    fast = root.parent / "fast.mp4"
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-i", str(whole), "-c", "copy", "-movflags", "+faststart",
                    str(fast)], check=True)
    data = fast.read_bytes()
    (root / "cut_fast.mp4").write_bytes(data[: int(len(data) * 0.6)])
    # the same cut without faststart: the index, written last, is missing
    data = whole.read_bytes()
    (root / "cut_plain.mp4").write_bytes(data[: int(len(data) * 0.6)])
    return root


def test_a_recording_cut_off_keeps_its_frames_and_is_partial(
    tmp_path: Path, cut_videos: Path, caffe_weights: Path
) -> None:
    kept = _decodable_prefix(cut_videos / "cut_fast.mp4")
    assert 12 < kept < 120
    out = tmp_path / "out"
    result = _run(tmp_path, caffe_weights, str(cut_videos), "--out", str(out))
    assert result.exit_code == 1, result.output  # cut_plain.mp4 failed
    assert "Traceback" not in result.output
    rows = pd.read_parquet(out / "videos.parquet").set_index("video")
    assert rows.loc["good.mp4", "status"] == "done"
    assert rows.loc["cut_plain.mp4", "status"] == "failed"
    assert "not a readable video" in rows.loc["cut_plain.mp4", "error"]
    cut = rows.loc["cut_fast.mp4"]
    assert cut.status == "partial", cut.error  # failed with 0 frames kept before
    assert cut.damaged_frame >= kept  # no fewer than one uninterrupted read of it decodes
    kept = int(cut.damaged_frame)
    assert cut.frames_processed == kept and f"decoding stopped at frame {kept}" in cut.error
    # a cause a user reads, said once: was "(decoding failed at frame N ([hh:mm:ss] .../threaded_decoder.cc:292:
    # [hh:mm:ss] .../threaded_decoder.cc:218: Check failed: avcodec_send_packet(...) >= 0 (-1094995529 vs. 0) ...))"
    assert "Check failed" not in cut.error and "decoding failed" not in cut.error, cut.error
    frames = _frames(out)
    assert sorted(frames[frames.video == "cut_fast.mp4"].frame) == list(range(kept))
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "cut_fast.mp4" in warnings[0] and "partial" in warnings[0]

    # without the unreadable one: exit 4 (partial, none failed); the rerun redoes nothing and
    # finds the damage where it was
    again = _run(tmp_path, caffe_weights, str(cut_videos / "good.mp4"), str(cut_videos / "cut_fast.mp4"),
                 "--out", str(out))
    assert again.exit_code == 4, again.output
    rows = pd.read_parquet(out / "videos.parquet").set_index("video")
    assert rows.loc["cut_fast.mp4", "status"] == "partial" and rows.loc["cut_fast.mp4", "damaged_frame"] == kept
    assert "cut_plain.mp4" not in rows.index  # no longer an input, and no rows to keep
    frames = _frames(out)
    assert not frames.duplicated().any() and (frames.video == "cut_fast.mp4").sum() == kept

    summary = CliRunner().invoke(app, ["summary", str(out)])
    assert summary.exit_code == 0, summary.output
    assert "2 (1 done, 1 partial, 0 failed)" in summary.output


def test_a_replaced_video_is_processed_again_and_a_missing_one_kept_as_absent(
    tmp_path: Path, scene: Scene, ffmpeg: str, caffe_weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vids = tmp_path / "vids"
    vids.mkdir()
    write_video(vids / "cam.mp4", scene, 60, ffmpeg=ffmpeg, gop=12)
    write_video(vids / "other.mp4", scene, 20, ffmpeg=ffmpeg, gop=10)
    out = tmp_path / "out"
    first = _run(tmp_path, caffe_weights, str(vids), "--out", str(out))
    assert first.exit_code == 0, first.output

    # the camera's file is replaced by a shorter recording (another part of the scene)
    old_size = os.path.getsize(vids / "cam.mp4")
    (vids / "cam.mp4").unlink()
    write_video(vids / "cam.mp4", scene, 30, ffmpeg=ffmpeg, gop=12, first=100)
    caplog.clear()
    second = _run(tmp_path, caffe_weights, str(vids), "--out", str(out))
    assert second.exit_code == 0, second.output  # "60 of 30 sampled frames committed", on every rerun, before
    changed = [r.getMessage() for r in caplog.records if "changed since" in r.getMessage()]
    assert changed == ["cam.mp4: changed since its rows were committed (its size went from "
                       f"{old_size} to {os.path.getsize(vids / 'cam.mp4')} bytes); processing it again from scratch"]
    rows = pd.read_parquet(out / "videos.parquet").set_index("video")
    assert rows.loc["cam.mp4", "status"] == "done" and rows.loc["cam.mp4", "frames_processed"] == 30
    st = os.stat(vids / "cam.mp4")
    assert rows.loc["cam.mp4", "size_bytes"] == st.st_size and rows.loc["cam.mp4", "mtime_ns"] == st.st_mtime_ns
    assert len(rows.loc["cam.mp4", "content_hash"]) == 64
    frames = _frames(out)
    assert sorted(frames[frames.video == "cam.mp4"].frame) == list(range(30))
    assert (frames.video == "other.mp4").sum() == 20

    # a copy that keeps the bytes (a new mtime) keeps the rows; a file gone leaves its rows, marked
    shutil.copy(vids / "cam.mp4", tmp_path / "cam-copy.mp4")
    os.replace(tmp_path / "cam-copy.mp4", vids / "cam.mp4")
    parts_before = sorted(p.name for p in (out / "frames").glob("part-*.parquet"))
    (vids / "other.mp4").unlink()
    caplog.clear()
    third = _run(tmp_path, caffe_weights, str(vids), "--out", str(out))
    assert third.exit_code == 0, third.output
    assert not any("changed since" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in (out / "frames").glob("part-*.parquet")) == parts_before
    rows = pd.read_parquet(out / "videos.parquet").set_index("video")
    assert rows.loc["other.mp4", "status"] == "absent" and rows.loc["other.mp4", "frames_processed"] == 20
    assert "not among this run's inputs" in rows.loc["other.mp4", "error"]
    assert np.isnan(rows.loc["other.mp4", "size_bytes"]) or rows.loc["other.mp4", "size_bytes"] is None
    assert len(_frames(out)) == 50


def _as_an_earlier_version_wrote(part: Path, shift_s: dict[str, float]) -> None:
    """Rewrites committed shard file ``part`` as versions before frames were numbered as FFmpeg
    shows them did: no ``reader`` beside the identities, and the rows of ``shift_s``'s videos
    at other times (the clip's hidden frames counted: its times started 0.4 s early)."""
    import json

    import pyarrow as pa
    import pyarrow.compute as pc

    from sinks.layout import INPUTS_KEY

    table = pq.read_table(part)
    meta = dict(table.schema.metadata)
    inputs = json.loads(meta[INPUTS_KEY])
    meta[INPUTS_KEY] = json.dumps({v: {k: x for k, x in rec.items() if k != "reader"} for v, rec in inputs.items()}).encode()
    times = table.column("time_s").to_numpy().copy()
    for video, shift in shift_s.items():
        times[pc.equal(table.column("video"), video).to_numpy(zero_copy_only=False)] += shift
    table = table.set_column(table.schema.get_field_index("time_s"), "time_s", pa.array(times))
    pq.write_table(table.replace_schema_metadata(meta), part)


def test_rows_an_earlier_version_decoded_from_a_copied_clip_are_redone_and_the_rest_kept(
    tmp_path: Path, scene: Scene, ffmpeg: str, caffe_weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An output resumed after an upgrade: the rows of a clip cut without re-encoding (read
    through its Matroska copy; versions before numbered its frames otherwise) are decoded again,
    the ordinary recording's are kept as they were."""
    vids = tmp_path / "vids"
    vids.mkdir()
    write_video(vids / "cam.mp4", scene, 90, ffmpeg=ffmpeg, codec="h264-main", gop=30)
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-ss", "1.6", "-i", str(vids / "cam.mp4"), "-c", "copy",
                    str(vids / "clip.mp4")], check=True)
    out = tmp_path / "out"
    first = _run(tmp_path, caffe_weights, str(vids), "--out", str(out))
    assert first.exit_code == 0, first.output
    fresh = pq.read_table(out / "frames").to_pandas().sort_values(["video", "frame"]).reset_index(drop=True)
    assert (fresh.video == "clip.mp4").sum() == 50
    parts = sorted((out / "frames").glob("part-*.parquet"))
    for part in parts:
        inputs = json.loads(pq.read_schema(part).metadata[b"maskjobs.inputs"])
        assert inputs and all(rec["reader"] == 2 and rec["size"] > 0 for rec in inputs.values())
        _as_an_earlier_version_wrote(part, {"clip.mp4": -0.4})
    cam_only = {p.name: p.stat().st_mtime_ns for p in parts
                if set(pq.read_table(p, columns=["video"]).column("video").to_pylist()) == {"cam.mp4"}}
    assert cam_only

    caplog.clear()
    second = _run(tmp_path, caffe_weights, str(vids), "--out", str(out))
    assert second.exit_code == 0, second.output
    warned = [r.getMessage() for r in caplog.records if "earlier version" in r.getMessage()]
    assert warned == ["clip.mp4: its rows were decoded by an earlier version that numbered this file's frames "
                      "otherwise than FFmpeg; processing it again from scratch"]
    again = pq.read_table(out / "frames").to_pandas().sort_values(["video", "frame"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(again, fresh)  # the clip's times as a fresh run has them, the rest kept
    assert {n: (out / "frames" / n).stat().st_mtime_ns for n in cam_only} == cam_only

    caplog.clear()  # recorded now: a third run keeps everything
    third = _run(tmp_path, caffe_weights, str(vids), "--out", str(out))
    assert third.exit_code == 0, third.output
    assert not [r for r in caplog.records if "earlier version" in r.getMessage()]
    pd.testing.assert_frame_equal(pq.read_table(out / "frames").to_pandas().sort_values(["video", "frame"])
                                  .reset_index(drop=True), fresh)
