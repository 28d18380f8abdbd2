"""Each video's wall-clock start and camera (:mod:`jobs.metadata`): the order of the sources,
time zones, and bad mapping files as one-line errors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from jobs.config import MetadataConfig, resolve_config
from jobs.errors import ConfigError, InputError
from jobs.metadata import (
    SOURCE_CREATION_TIME, SOURCE_FILE_NAME, SOURCE_MAPPING, MetadataResolver, VideoMeta, default_camera, parse_time,
    video_meta_columns,
)

PATTERN = r"_(?P<start>\d{8}_\d{6})"


def _resolver(tmp_path: Path, **kw: object) -> MetadataResolver:
    return MetadataResolver.from_config(MetadataConfig(**kw))  # type: ignore[arg-type]


def test_the_camera_is_the_folder_by_default() -> None:
    assert default_camera("site/cam3/a.mp4") == "cam3"
    assert default_camera("cam3_20260315.mp4") == "cam3_20260315"
    r = MetadataResolver.from_config(MetadataConfig())
    assert r.camera("north/x.mp4") == "north" and r.resolve("north/x.mp4") == VideoMeta("north")
    # a directory given as the input: the video's id has no folder, its file's folder names the camera
    assert r.camera("x.mp4", "/data/cams/south/x.mp4") == "south"
    assert MetadataResolver.from_config(MetadataConfig(cameras={"south": "S"})).camera("x.mp4", "/c/south/x.mp4") == "S"


def test_cameras_from_the_mapping_then_the_pattern(tmp_path: Path) -> None:
    r = MetadataResolver.from_config(MetadataConfig(
        cameras={"lobby": "entrance-B", "x.mp4": "roof", "lobby/special.mp4": "desk"},
        camera_pattern=r"^(?P<camera>cam\d+)_",
    ))
    assert r.camera("lobby/a.mp4") == "entrance-B"  # by folder
    assert r.camera("lobby/special.mp4") == "desk"  # the video id wins over its folder
    assert r.camera("elsewhere/x.mp4") == "roof"  # by file name
    assert r.camera("cam7_20260315_080000.mp4") == "cam7"  # the pattern
    assert r.camera("misc/other.mp4") == "misc"  # the folder


def test_sources_in_order_mapping_name_creation_time(tmp_path: Path) -> None:
    mapping = tmp_path / "starts.csv"
    mapping.write_text("video,start,timezone,camera\nmapped_20260101_000000.mp4,2026-03-15T07:30:00,Europe/Paris,\n")
    r = _resolver(tmp_path, start_times=str(mapping), time_pattern=PATTERN, timezone="Europe/London")
    created = datetime(2026, 3, 15, 6, 0, tzinfo=timezone.utc)

    m = r.resolve("d/mapped_20260101_000000.mp4", created)  # mapping beats the name and the container
    assert m.source == SOURCE_MAPPING and m.timezone == "Europe/Paris"
    assert m.start == datetime(2026, 3, 15, 7, 30, tzinfo=ZoneInfo("Europe/Paris"))
    assert m.start_us == int(datetime(2026, 3, 15, 6, 30, tzinfo=timezone.utc).timestamp() * 1e6)

    n = r.resolve("d/cam3_20260315_080000.mp4", created)  # the name beats the container
    assert n.source == SOURCE_FILE_NAME and n.timezone == "Europe/London"
    assert n.start == datetime(2026, 3, 15, 8, 0, tzinfo=ZoneInfo("Europe/London"))
    assert not r.needs_container("d/cam3_20260315_080000.mp4") and r.needs_container("d/plain.mp4")

    c = r.resolve("d/plain.mp4", created)
    assert c.source == SOURCE_CREATION_TIME and c.start == created and c.timezone == "Europe/London"

    u = r.resolve("d/plain.mp4", None)  # nothing: unknown, never guessed
    assert (u.start, u.source, u.timezone, u.start_us) == (None, None, None, None)
    cols = video_meta_columns(u, 12.0)
    assert cols == {"camera": "d", "start": None, "end": None, "start_source": None, "timezone": None}
    cols = video_meta_columns(n, 90.5)
    assert cols["end"] - cols["start"] == timedelta(seconds=90.5) and cols["start"].tzinfo == timezone.utc


def test_yaml_mapping_with_offsets_and_folders(tmp_path: Path) -> None:
    mapping = tmp_path / "starts.yaml"
    mapping.write_text(
        "a.mp4: '2026-03-15T08:00:00+05:30'\n"
        "night: {start: '2026-03-16T22:00:00', timezone: America/New_York, camera: gate}\n"
    )
    r = _resolver(tmp_path, start_times=str(mapping))
    a = r.resolve("x/a.mp4")
    assert a.timezone == "+05:30" and a.start.utcoffset() == timedelta(hours=5, minutes=30)
    b = r.resolve("night/b.mp4")  # a folder's entry applies to the videos in it
    assert b.camera == "gate" and b.start == datetime(2026, 3, 17, 2, 0, tzinfo=timezone.utc)  # EDT, -4


def test_an_offset_in_the_text_wins_over_the_default_zone() -> None:
    dt, name = parse_time("2026-07-01T10:00:00+02:00", "Europe/Paris")
    assert name == "Europe/Paris" and dt.utcoffset() == timedelta(hours=2)  # the same offset: the name is kept
    dt, name = parse_time("2026-07-01T10:00:00Z", "Europe/Paris")
    assert name == "UTC" and dt.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("s.csv", "video,start\na.mp4,not a time\n", "entry 'a.mp4' (row 2)"),
        ("s.csv", "name,start\na.mp4,2026-01-01T00:00:00\n", "needs a header with columns video,start"),
        ("s.yaml", "[1, 2]\n", "expected a mapping"),
        ("s.yaml", "a.mp4: {start: '2026-01-01T00:00:00', timezone: Mars/Olympus}\n", "unknown time zone"),
    ],
)
def test_a_bad_mapping_file_is_one_line_naming_it(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as info:
        _resolver(tmp_path, start_times=str(path))
    assert str(info.value).startswith(str(path)) and expected in str(info.value) and "\n" not in str(info.value)


def test_bad_patterns_and_zones_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="group named 'start'"):
        MetadataResolver.from_config(MetadataConfig(time_pattern=r"\d+"))
    with pytest.raises(ConfigError, match="not a regular expression"):
        MetadataResolver.from_config(MetadataConfig(camera_pattern="(?P<camera>"))
    with pytest.raises(ConfigError, match="unknown time zone"):
        MetadataResolver.from_config(MetadataConfig(timezone="Nowhere/City"))


def test_the_config_takes_a_camera_mapping_and_privacy_modes(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("metadata:\n  cameras: {lobby: B, 'x.mp4': roof}\nprivacy:\n  mode: pixelate\n")
    cfg = resolve_config(path)
    assert cfg.metadata.cameras == {"lobby": "B", "x.mp4": "roof"} and cfg.privacy.mode == "pixelate"
    path.write_text("metadata:\n  cameras: [a, b]\n")
    with pytest.raises(ConfigError, match="metadata.cameras"):
        resolve_config(path)
    with pytest.raises(ConfigError, match="privacy.mode must be one of"):
        resolve_config(None, {"privacy.mode": "none"})
    with pytest.raises(ConfigError, match="aggregate keeps no pictures"):
        resolve_config(None, {"privacy.mode": "aggregate", "annotate.enabled": True})
