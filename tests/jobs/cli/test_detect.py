"""``maskjobs detect`` through Typer's CliRunner, on real pictures and a real video."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks.videogen import Scene, write_video
from jobs.cli.main import app
from tests.conftest import read_rgb


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_detect_json_on_photos(runner: CliRunner, caffe_weights: Path, masked_photo: Path, unmasked_photo: Path) -> None:
    result = runner.invoke(app, ["detect", str(masked_photo), str(unmasked_photo), "--weights", str(caffe_weights), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [o["video"] for o in out] == [str(masked_photo), str(unmasked_photo)]
    assert [o["frame"] for o in out] == [0, 0]
    assert [d["label"] for o in out for d in o["detections"]] == ["Mask", "NoMask"]
    det = out[0]["detections"][0]
    assert set(det) == {"label", "score", "x1", "y1", "x2", "y2"}
    assert det["score"] == pytest.approx(0.9071, abs=1e-4)


def test_detect_table(runner: CliRunner, pth_weights: Path, masked_photo: Path) -> None:
    result = runner.invoke(app, ["detect", str(masked_photo), "--weights", str(pth_weights)])
    assert result.exit_code == 0
    assert "Mask" in result.stdout and "0.9071" in result.stdout


def test_unreadable_picture_is_reported_and_others_still_run(
    runner: CliRunner, caffe_weights: Path, masked_photo: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    empty = tmp_path / "empty.png"
    empty.touch()
    args = ["detect", str(broken), str(masked_photo), str(empty), "--weights", str(caffe_weights), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert [o["video"] for o in json.loads(result.stdout)] == [str(masked_photo)]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert str(broken) in lines[0] and "not a readable picture" in lines[0]
    assert str(empty) in lines[1] and "empty" in lines[1]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("content", [b"", b"garbage" * 100])
def test_bad_weights_is_one_line_exit_2(runner: CliRunner, masked_photo: Path, tmp_path: Path, content: bytes) -> None:
    weights = tmp_path / "bad.caffemodel"
    weights.write_bytes(content)
    result = runner.invoke(app, ["detect", str(masked_photo), "--weights", str(weights)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and str(weights) in result.stderr
    assert "Traceback" not in result.output


def test_weights_from_environment(runner: CliRunner, caffe_weights: Path, masked_photo: Path, monkeypatch) -> None:
    monkeypatch.setenv("MASKJOBS_WEIGHTS", str(caffe_weights))
    result = runner.invoke(app, ["detect", str(masked_photo), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["detections"]


def test_no_weights_anywhere(runner: CliRunner, masked_photo: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MASKJOBS_WEIGHTS", raising=False)
    monkeypatch.setenv("MASKJOBS_CACHE", str(tmp_path))
    result = runner.invoke(app, ["detect", str(masked_photo)])
    assert result.exit_code == 2 and "no weights" in result.stderr


@pytest.mark.slow  # encodes and decodes a video
def test_detect_every_frame_of_a_video(
    runner: CliRunner, caffe_weights: Path, masked_photo: Path, unmasked_photo: Path, tmp_path: Path, ffmpeg: str
) -> None:
    scene = Scene((read_rgb(unmasked_photo), read_rgb(masked_photo)))
    video = write_video(tmp_path / "clip.mp4", scene, 30, ffmpeg=ffmpeg)
    result = runner.invoke(app, ["detect", str(video), "--weights", str(caffe_weights), "--json", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [o["frame"] for o in out] == list(range(30))
    labels = [sorted(d["label"] for d in o["detections"]) for o in out]
    assert sum(lab == ["Mask", "NoMask"] for lab in labels) >= 25


def test_detect_tiles_finds_a_small_face(runner: CliRunner, caffe_weights: Path, unmasked_photo: Path, tmp_path: Path) -> None:
    """A 48 px face in a 1920x1080 picture: whole-frame mode finds nothing, ``--tiles 4x4`` finds it."""
    import cv2
    import numpy as np

    photo = read_rgb(unmasked_photo)
    s = 48 / (278.7 - 182.1)  # the reference's face box on the photo is 96.6 px wide
    small = cv2.resize(photo, (round(photo.shape[1] * s), round(photo.shape[0] * s)), interpolation=cv2.INTER_AREA)
    frame = np.full((1080, 1920, 3), 90, np.uint8)
    frame[500 : 500 + small.shape[0], 700 : 700 + small.shape[1]] = small
    path = tmp_path / "far.png"
    cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    whole = runner.invoke(app, ["detect", str(path), "--weights", str(caffe_weights), "--json"])
    assert whole.exit_code == 0, whole.output
    assert json.loads(whole.stdout)[0]["detections"] == []
    tiled = runner.invoke(app, ["detect", str(path), "--weights", str(caffe_weights), "--json", "--tiles", "4x4"])
    assert tiled.exit_code == 0, tiled.output
    dets = json.loads(tiled.stdout)[0]["detections"]
    assert [d["label"] for d in dets] == ["NoMask"]
    assert 700 < dets[0]["x1"] < dets[0]["x2"] < 700 + small.shape[1]


def test_detect_bad_tiles_is_exit_2(runner: CliRunner, caffe_weights: Path, masked_photo: Path) -> None:
    result = runner.invoke(app, ["detect", str(masked_photo), "--weights", str(caffe_weights), "--tiles", "3by3"])
    assert result.exit_code == 2
    assert "ROWSxCOLS" in result.output
