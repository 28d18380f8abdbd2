"""Where and when, end to end: generated footage in camera folders, each video's start from
a different source, a real ``maskjobs run``; timestamps equal start + offset; zones and lines
computed afterwards from the committed rows; ``privacy: aggregate`` keeps no face pixels."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from benchmarks.videogen import PathScene, Walker, write_video
from jobs.cli.main import app
from jobs.metadata import creation_time
from tests.conftest import S3Server, read_rgb
from tests.jobs.results.test_report import ARTIFACTS, _browse, chromium  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow  # encodes videos and runs maskjobs on a real Ray

CREATED = "2026-03-15T09:30:00Z"
MAPPED = "2026-03-16T07:45:00"  # Europe/Paris, from the mapping file


def _tag(ffmpeg: str, src: Path, dst: Path, created: str) -> None:
    """``src`` re-muxed to ``dst`` with the container's creation_time set."""
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-i", str(src), "-c", "copy", "-metadata",
                    f"creation_time={created}", str(dst)], check=True)
    src.unlink()


@pytest.fixture(scope="module")
def cams(tmp_path_factory: pytest.TempPathFactory, masked_photo: Path, unmasked_photo: Path, ffmpeg: str) -> Path:
    """``north/cam3_20260315_080000.mp4`` (time in its name), ``south/mapped.mp4`` (in the
    mapping), ``south/created.mp4`` (creation_time tag), ``east/unknown.mp4`` (no time): each an
    unmasked face walking left to right along the top and a masked one standing at the bottom."""
    unmasked, masked = read_rgb(unmasked_photo), read_rgb(masked_photo)
    scene = PathScene((Walker(unmasked, (0, 10), (430, 10), 200), Walker(masked, (240, 260), (250, 260), 200)), 50)
    root = tmp_path_factory.mktemp("cams")
    for video in ("north/cam3_20260315_080000.mp4", "south/mapped.mp4", "south/created.mp4", "east/unknown.mp4"):
        (root / video).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / video, scene, scene.frames, ffmpeg=ffmpeg, gop=10)
    _tag(ffmpeg, root / "south/created.mp4", root / "south/created.mov", CREATED)
    (root / "east/broken.mp4").write_bytes(b"\x00" * 4096)  # fails; the report says why
    return root


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def job(cams: Path, caffe_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("when")
    starts = tmp / "starts.csv"
    starts.write_text(f"video,start,timezone\nsouth/mapped.mp4,{MAPPED},Europe/Paris\n")
    cfg = tmp / "job.yaml"
    cfg.write_text("metadata:\n  time_pattern: '_(?P<start>\\d{8}_\\d{6})'\n  timezone: Europe/London\n"
                   "planning:\n  shard_frames: 20\n  pack_frames: 20\n")
    out = tmp / "out"
    code, output = _run(["run", str(cams), "--out", str(out), "--weights", str(caffe_weights), "--config", str(cfg),
                         "--start-times", str(starts)])
    assert code == 1 and "east/broken.mp4" in output, output  # every other video is done
    return out


def test_creation_time_is_read_from_the_container(cams: Path) -> None:
    assert creation_time(str(cams / "south/created.mov")) == datetime(2026, 3, 15, 9, 30, tzinfo=timezone.utc)
    assert creation_time(str(cams / "east/unknown.mp4")) is None  # FFmpeg's muxer writes none by default
    assert creation_time(str(cams / "no such file.mp4")) is None


def test_each_source_gives_the_start_and_timestamps_are_start_plus_offset(job: Path) -> None:
    videos = pd.read_parquet(job / "videos.parquet").set_index("video")
    assert videos.camera.to_dict() == {
        "east/broken.mp4": "east", "east/unknown.mp4": "east", "north/cam3_20260315_080000.mp4": "north", "south/created.mov": "south",
        "south/mapped.mp4": "south",
    }
    expected = {
        "north/cam3_20260315_080000.mp4": (datetime(2026, 3, 15, 8, 0, tzinfo=ZoneInfo("Europe/London")),
                                           "file_name", "Europe/London"),
        "south/mapped.mp4": (datetime(2026, 3, 16, 7, 45, tzinfo=ZoneInfo("Europe/Paris")), "mapping", "Europe/Paris"),
        "south/created.mov": (datetime(2026, 3, 15, 9, 30, tzinfo=timezone.utc), "creation_time", "Europe/London"),
    }
    for video, (start, source, tz) in expected.items():
        row = videos.loc[video]
        assert row.start == pd.Timestamp(start) and row.start_source == source and row.timezone == tz
        assert row.end - row.start == pd.Timedelta(seconds=row.duration_s)
    unknown = videos.loc["east/unknown.mp4"]
    assert pd.isna(unknown.start) and pd.isna(unknown.end) and pd.isna(unknown.start_source)

    schema = pq.read_schema(next((job / "frames").glob("part-*.parquet")))
    assert str(schema.field("timestamp").type) == "timestamp[us, tz=UTC]"
    frames = pd.read_parquet(job / "frames")
    assert len(frames) == 4 * 50
    assert (videos.status == "done").sum() == 4
    for video, group in frames.groupby("video"):
        assert (group.camera == videos.loc[video, "camera"]).all()
        if video == "east/unknown.mp4":
            assert group.timestamp.isna().all()  # never guessed
            continue
        want = videos.loc[video, "start"] + pd.to_timedelta(group.time_s, unit="s")
        assert (group.timestamp - want).abs().max() <= pd.Timedelta(microseconds=1)

    tracks = pd.read_parquet(job / "tracks.parquet")
    assert set(tracks.camera) == {"north", "south", "east"} and len(tracks) == 8  # two people per video
    t = tracks.set_index("video").loc["north/cam3_20260315_080000.mp4"].iloc[0]
    assert t.first_time == videos.loc["north/cam3_20260315_080000.mp4", "start"] + pd.Timedelta(seconds=t.first_s)
    assert tracks[tracks.video == "east/unknown.mp4"].first_time.isna().all()


ZONES = """interval: 1h
cameras:
  north:
    coordinates: relative
    zones:
      top: [[0, 0], [1, 0], [1, 0.5], [0, 0.5]]
    lines:
      middle: [[0.5, 0], [0.5, 1]]
  south:
    zones:
      bottom: [[0, 240], [640, 240], [640, 480], [0, 480]]
"""


def test_zones_after_the_fact(job: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(job, out)
    zones = tmp_path / "zones.yaml"
    zones.write_text(ZONES)
    code, output = _run(["zones", str(out), "--zones", str(zones)])
    assert code == 0, output
    assert "zones/intervals.parquet" in output
    frames = pd.read_parquet(out / "frames")
    per_video = frames.groupby("video")[["faces", "masked"]].sum()

    cams = pd.read_parquet(out / "zones" / "cameras.parquet")
    by_cam = cams.groupby("camera")[["faces", "masked", "faces_outside"]].sum()
    # north's only zone is the top half: the masked face standing at the bottom stops counting
    north = per_video.loc["north/cam3_20260315_080000.mp4"]
    assert by_cam.loc["north", "faces"] == north.faces - north.masked and by_cam.loc["north", "masked"] == 0
    assert by_cam.loc["north", "faces_outside"] == north.masked
    # south's zone is the bottom half: only the masked faces count, compliance 100 %
    south = per_video.loc[["south/mapped.mp4", "south/created.mov"]].sum()
    assert by_cam.loc["south", "faces"] == south.masked and by_cam.loc["south", "masked"] == south.masked
    # east has no zones: every face counts
    assert by_cam.loc["east", "faces"] == per_video.loc["east/unknown.mp4", "faces"]
    assert by_cam.loc["east", "faces_outside"] == 0

    # intervals are wall-clock hours of the video's local time
    north_rows = cams[cams.camera == "north"]
    assert list(north_rows.start.dt.tz_convert("Europe/London").dt.strftime("%H:%M")) == ["08:00"]
    people = pd.read_parquet(out / "zones" / "people.parquet")
    top = people[people.zone == "top"]
    assert len(top) == 1 and top.iloc[0].label == "NoMask" and top.iloc[0].entry_label == "NoMask"
    assert top.iloc[0].entered == pd.Timestamp("2026-03-15T08:00:00", tz="Europe/London") + pd.Timedelta(
        seconds=top.iloc[0].entered_s)

    # the unmasked walker crosses the middle line once, left to right on the picture
    crossings = pd.read_parquet(out / "zones" / "crossings.parquet")
    assert len(crossings) == 1 and crossings.iloc[0].direction == "right_to_left"  # looking from A (top) to B
    assert crossings.iloc[0].track_label == "NoMask"
    lines = pd.read_parquet(out / "zones" / "lines.parquet")
    assert lines[["crossings", "unmasked"]].sum().tolist() == [1, 1]

    # change the zones file and run it again: cheap, no model; the masked face now counts
    zones.write_text(ZONES.replace("[1, 0.5], [0, 0.5]", "[1, 1], [0, 1]"))
    code, output = _run(["zones", str(out), "--zones", str(zones), "--interval", "15min"])
    assert code == 0, output
    cams = pd.read_parquet(out / "zones" / "cameras.parquet")
    assert cams[cams.camera == "north"].faces.sum() == north.faces
    assert json.loads((out / "zones" / "zones.json").read_text())["interval"] == "15min"

    zones.write_text("cameras:\n  north:\n    zones:\n      a: [[0, 0], [1, 1]]\n")
    code, output = _run(["zones", str(out), "--zones", str(zones)])
    assert code == 2 and "expected at least 3 [x, y] points" in output


def _jpeg_anywhere(root: Path) -> list[str]:
    """Files under ``root`` holding a JPEG (its start-of-image marker) or a data: picture."""
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if b"\xff\xd8\xff" in data or b"data:image" in data:
                found.append(str(path.relative_to(root)))
    return found


def test_aggregate_keeps_no_face_pixels_and_no_boxes(cams: Path, caffe_weights: Path, tmp_path: Path) -> None:
    zones = tmp_path / "zones.yaml"
    zones.write_text(ZONES)
    out = tmp_path / "agg"
    args = ["run", str(cams / "north"), "--out", str(out), "--weights", str(caffe_weights), "--privacy", "aggregate",
            "--zones", str(zones)]
    code, output = _run(args)
    assert code == 0, output
    assert json.loads((out / "job.json").read_text())["privacy"] == "aggregate"
    frames = pd.read_parquet(out / "frames")
    dets = frames.detections.explode().dropna()
    assert len(dets) > 0 and frames.faces.sum() == len(dets)  # the counts stay
    assert all(d[k] is None for d in dets for k in ("x1", "y1", "x2", "y2"))  # no boxes
    tracks = pd.read_parquet(out / "tracks.parquet")
    assert len(tracks) == 2 and tracks.thumbnail.isna().all() and tracks[["x1", "y1", "x2", "y2"]].isna().all().all()
    assert not (out / "annotated").exists()
    zoned = pd.read_parquet(out / "zones" / "cameras.parquet")  # zones computed during the run
    assert zoned.faces_outside.sum() > 0

    report = tmp_path / "report.html"
    code, output = _run(["report", str(out), "-o", str(report)])
    assert code == 0, output
    assert 'data-mode="aggregate"' in report.read_text()
    assert _jpeg_anywhere(out) == [] and _jpeg_anywhere(tmp_path) == []

    # after the run, zones need boxes: refused in one line
    code, output = _run(["zones", str(out), "--zones", str(zones)])
    assert code == 2 and "privacy: aggregate" in output
    # running again (nothing left to do) keeps the people counted before the boxes went
    code, output = _run(args)
    assert code == 0, output
    assert pd.read_parquet(out / "videos.parquet").people.tolist() == [2]
    assert len(pd.read_parquet(out / "tracks.parquet")) == 2
    # a later run in another mode cannot bring faces back: the boxes are gone, the people stay
    code, output = _run(args[:6])
    assert code == 0, output
    assert pd.read_parquet(out / "tracks.parquet").thumbnail.isna().all() and _jpeg_anywhere(out) == []
    assert pd.read_parquet(out / "videos.parquet").people.tolist() == [2]


def test_report_by_camera_hour_and_zone_in_chromium(job: Path, tmp_path: Path, chromium: str) -> None:
    out = tmp_path / "copy"
    shutil.copytree(job, out)
    zones = tmp_path / "zones.yaml"
    zones.write_text(ZONES)
    assert _run(["zones", str(out), "--zones", str(zones)])[0] == 0
    page = tmp_path / "report.html"
    code, output = _run(["report", str(out), "-o", str(page)])
    assert code == 0, output
    dom = _browse(chromium, page, tmp_path, "--dump-dom").stdout
    assert 'data-mode="blur"' in dom and "faces in pictures are blurred" in dom
    heat = re.search(r'<table class="heatmap" id="camera-hours">(.*?)</table>', dom, flags=re.S).group(1)
    # local hours: north 08:00 London (file name), south 07:45 Paris (mapping) and 09:30 London
    # (creation_time), east unknown; one row per camera
    hours = re.findall(r'data-hour="(-?\d+)"', heat)
    assert hours == ["-1", "7", "8", "9"]
    assert re.findall(r"<tr><td>([a-z]+)</td>", heat) == ["east", "north", "south"]
    # north's zone leaves out the masked face: 0 % there; south's keeps only it: 100 %
    north = re.search(r"<tr><td>north</td>(.*?)</tr>", heat).group(1)
    assert re.findall(r">(\d+%)<", north) == ["0%"]
    south = re.search(r"<tr><td>south</td>(.*?)</tr>", heat).group(1)
    assert re.findall(r">(\d+%)<", south) == ["100%", "100%"]
    assert 'id="zone-hours"' in dom and "<td>top</td>" in dom and "<td>bottom</td>" in dom
    problems = re.search(r'<table id="problems">(.*?)</table>', dom, flags=re.S).group(1)
    assert 'data-video="east/broken.mp4"' in problems and "failed" in problems and "not a readable video" in problems

    # `maskjobs summary` prints the same table and the failed video's reason
    code, output = _run(["summary", str(out)])
    assert code == 0, output
    cells = {ln.split("│")[1].strip(): [c.strip() for c in ln.split("│")[2:-1]] for ln in output.splitlines()
             if ln.count("│") >= 5 and ln.split("│")[1].strip() in ("east", "north", "south", "north/top")}
    assert cells == {"east": ["50%", "–", "–", "–"], "north": ["–", "–", "0%", "–"], "south": ["–", "100%", "–", "100%"],
                     "north/top": ["–", "–", "0%", "–"]}, output
    assert "privacy mode" in output and "east/broken.mp4" in output and "not a readable video" in output

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-cameras.png"
    shot.unlink(missing_ok=True)
    _browse(chromium, page, tmp_path, f"--screenshot={shot}")
    print(f"report screenshot: {shot}")
    assert cv2.imread(str(shot)) is not None


def _readme_block(language: str, marker: str) -> str:
    """The README's fenced ``language`` block that contains ``marker``."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"{len(found)} {language} blocks with {marker!r}"
    return found[0]


def test_the_readme_queries_run_on_a_real_output(job: Path, tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb", reason="duckdb is in the dev extras: pip install -e '.[dev]'")
    out = tmp_path / "results"
    shutil.copytree(job, out)
    zones = tmp_path / "zones.yaml"
    zones.write_text(ZONES.replace("top:", "door:"))
    assert _run(["zones", str(out), "--zones", str(zones)])[0] == 0

    def local(code: str) -> str:
        return code.replace('"results/', f'"{out}/').replace("'results/", f"'{out}/")

    scope: dict[str, object] = {}
    exec(local(_readme_block("python", "compliance per camera per hour")), scope)  # noqa: S102  (our README)
    per_hour = scope["per_hour"]
    frames = pd.read_parquet(out / "frames")
    videos = pd.read_parquet(out / "videos.parquet").set_index("video")
    # the three timed videos: north 15 March 08:00 UTC (London is on UTC then), south 15 March
    # 09:30 UTC (creation_time) and 16 March 06:45 UTC (07:45 in Paris, the mapping)
    expected = [("north", "03-15 08:00"), ("south", "03-15 09:00"), ("south", "03-16 06:00")]
    assert [(c, h.strftime("%m-%d %H:%M")) for c, h in per_hour.index] == expected
    timed = frames[frames.timestamp.notna()]
    assert per_hour.faces.sum() == timed.faces.sum() and per_hour.masked.sum() == timed.masked.sum()
    door = scope["door_unmasked"]
    assert len(door) == 1 and door.iloc[0].video == "north/cam3_20260315_080000.mp4"
    assert door.iloc[0].entered >= videos.loc[door.iloc[0].video, "start"]

    sql = local(_readme_block("sql", "date_trunc"))
    con = duckdb.connect()
    statements = [s for s in sql.split(";") if s.strip()]
    con.execute(statements[0])
    rows = con.execute(statements[1]).fetchall()
    assert [(c, h.strftime("%m-%d %H:%M")) for c, h, _, _ in rows] == expected
    assert [round(x, 6) for _, _, x, _ in rows] == [round(x, 6) for x in per_hour.compliance]
    people = con.execute(statements[2]).fetchall()
    assert [(v, t) for _, v, t, *_ in people] == list(zip(door.video, door.track))


def test_zones_on_an_object_store_output(cams: Path, caffe_weights: Path, s3_server: S3Server, tmp_path: Path) -> None:
    """``run --zones`` and ``maskjobs zones`` on an s3:// output (moto): read and written in the bucket."""
    import pyarrow.fs as pafs

    zones = tmp_path / "zones.yaml"
    zones.write_text(ZONES)
    uri = s3_server.uri("when/job")
    code, output = _run(["run", str(cams / "north"), "--out", uri, "--weights", str(caffe_weights), "--zones", str(zones)])
    assert code == 0, output
    fs, root = pafs.FileSystem.from_uri(uri)

    def faces_outside() -> int:
        with fs.open_input_file(f"{root}/zones/cameras.parquet") as f:
            return int(pq.read_table(f).column("faces_outside").to_pandas().sum())

    assert faces_outside() > 0  # the masked face below the "top" zone
    zones.write_text(ZONES.replace("[1, 0.5], [0, 0.5]", "[1, 1], [0, 1]"))
    code, output = _run(["zones", uri, "--zones", str(zones)])
    assert code == 0, output
    assert faces_outside() == 0
    assert "testing:testing" not in output  # no credentials in what it prints


def _face_sharpness(thumbnail: bytes) -> float:
    """Variance of the Laplacian in the middle of a thumbnail (the face inside its 35 % margin)."""
    grey = cv2.imdecode(np.frombuffer(thumbnail, np.uint8), cv2.IMREAD_GRAYSCALE)
    h, w = grey.shape
    return float(cv2.Laplacian(grey[h // 3: 2 * h // 3, w // 3: 2 * w // 3], cv2.CV_64F).var())


def test_raw_faces_only_when_asked_and_a_later_run_blurs_them(cams: Path, caffe_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    args = ["run", str(cams / "north"), "--out", str(out), "--weights", str(caffe_weights)]
    code, output = _run([*args, "--privacy", "raw"])
    assert code == 0, output
    assert json.loads((out / "job.json").read_text())["privacy"] == "raw"
    raw = pd.read_parquet(out / "tracks.parquet").dropna(subset=["thumbnail"])
    assert len(raw) == 1 and (raw.thumbnail_privacy == "raw").all()
    report = tmp_path / "raw.html"
    assert _run(["report", str(out), "-o", str(report)])[0] == 0
    assert 'data-mode="raw"' in report.read_text() and "NOT hidden" in report.read_text()

    code, output = _run(args)  # the default again: nothing to detect, the thumbnail is drawn again, blurred
    assert code == 0, output
    blurred = pd.read_parquet(out / "tracks.parquet").dropna(subset=["thumbnail"])
    assert (blurred.thumbnail_privacy == "blur").all() and blurred.best_frame.tolist() == raw.best_frame.tolist()
    sharp_raw, sharp_blur = _face_sharpness(raw.thumbnail.iloc[0]), _face_sharpness(blurred.thumbnail.iloc[0])
    print(f"thumbnail Laplacian variance: raw {sharp_raw:.1f}, blur {sharp_blur:.1f}")
    assert sharp_blur < sharp_raw / 10
