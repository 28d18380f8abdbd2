"""Zones and lines after the fact: per-zone compliance and people, line crossings, from the rows.

Nothing here runs the model: the committed detections (``frames/``), ``tracks.parquet`` and
``videos.parquet`` are read back and every face is placed by its box's centre. Changing the
zones file and running ``maskjobs zones OUT --zones FILE`` again only redoes this.

Zones file (YAML)::

    interval: 15min                 # the intervals of the per-interval tables (default 1h)
    cameras:
      north:                        # a camera id (videos.parquet's ``camera``)
        coordinates: relative       # relative (0..1 of the frame) or pixels (the default)
        zones:
          entrance: [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]     # a polygon, >= 3 points
        lines:
          door: [[0.5, 0], [0.5, 1]]                       # from A to B

A face is in a zone when its box's centre is inside the polygon (even-odd rule). Faces of
a camera that has zones but lying outside every one of them are not counted in that camera's
compliance (``cameras.parquet``; ``faces_outside`` says how many), so a poster on a wall
outside the zones does not count. A line is crossed when a track's centre moves from one side
to the other between two of its detections and the step passes between A and B; looking from
A to B, ``left_to_right`` or ``right_to_left``.

Output, under ``OUT/zones/`` (each file written atomically):

- ``intervals.parquet``: camera, zone, video, start (UTC instant of the interval, null when the
  video's start is unknown), start_s (the interval's offset in the video), frames, faces,
  masked, unmasked, compliance, people, people_unmasked (tracks labelled NoMask);
- ``cameras.parquet``: the same per camera (no zone), with faces_outside;
- ``people.parquet``: one row per person and zone: entered/left (times and offsets), label
  (the track's), entry_label (the first detection's in the zone), detections;
- ``crossings.parquet``: one row per line crossing: camera, line, video, track, direction,
  time_s, timestamp, label (the detection's after the crossing), track_label;
- ``lines.parquet``: per camera, line, video, interval and direction: crossings, unmasked
  (crossings by people labelled NoMask).
"""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from detector.spec import MASK, NO_MASK
from jobs.config import read_yaml_mapping
from jobs.errors import InputError, one_line
from jobs.metadata import zone
from sinks.atomic import atomic_write, make_dirs
from sinks.schema import TIMESTAMP
from sinks.store import OutputStore

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = "1h"
LEFT_TO_RIGHT = "left_to_right"
RIGHT_TO_LEFT = "right_to_left"


@dataclass(frozen=True)
class CameraZones:
    """One camera's zones and lines. ``relative``: points are shares of the frame's width and
    height; else pixels. ``zones``: name -> (M, 2) x, y; ``lines``: name -> (2, 2) A, B."""

    relative: bool
    zones: dict[str, np.ndarray]
    lines: dict[str, np.ndarray]


@dataclass(frozen=True)
class ZonesSpec:
    interval: str
    cameras: dict[str, CameraZones]


def _points(source: str, where: str, value: Any, *, least: int, most: int | None, relative: bool) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{source}: {where}: expected a list of [x, y] points") from None
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < least or (most is not None and len(arr) > most):
        count = f"{least}" if most == least else f"at least {least}"
        raise InputError(f"{source}: {where}: expected {count} [x, y] points, got {value!r}")
    if not np.isfinite(arr).all():
        raise InputError(f"{source}: {where}: points must be finite numbers")
    if relative and ((arr < 0) | (arr > 1)).any():
        raise InputError(f"{source}: {where}: relative coordinates must be within 0..1")
    return arr


def load_zones(path: Path, interval: str | None = None) -> ZonesSpec:
    """Reads and checks a zones file; raises :class:`InputError` naming the file and the cause."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the zones file ({one_line(exc)})") from None
    expected = "expected a mapping with a non-empty 'cameras:' section"
    data = read_yaml_mapping(str(path), text, expected=expected, error=InputError)
    if not isinstance(data.get("cameras"), dict) or not data["cameras"]:
        raise InputError(f"{path}: {expected}")
    unknown = set(data) - {"interval", "cameras"}
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(sorted(map(str, unknown)))} (known: interval, cameras)")
    interval = interval or str(data.get("interval") or DEFAULT_INTERVAL)
    try:
        if pd.Timedelta(interval) <= pd.Timedelta(0):
            raise ValueError
    except ValueError:
        raise InputError(f"{path}: interval {interval!r} is not a positive duration (e.g. 15min, 1h)") from None
    cameras = {}
    for camera, spec in data["cameras"].items():
        where = f"camera {camera!r}"
        if not isinstance(spec, dict) or not (set(spec) <= {"coordinates", "zones", "lines"}):
            raise InputError(f"{path}: {where}: expected keys coordinates, zones, lines")
        units = spec.get("coordinates", "pixels")
        if units not in ("pixels", "relative"):
            raise InputError(f"{path}: {where}: coordinates must be pixels or relative, got {units!r}")
        relative = units == "relative"
        zones, lines = spec.get("zones") or {}, spec.get("lines") or {}
        if not isinstance(zones, dict) or not isinstance(lines, dict) or not (zones or lines):
            raise InputError(f"{path}: {where}: needs 'zones:' and/or 'lines:', each a mapping of name -> points")
        cameras[str(camera)] = CameraZones(
            relative,
            {str(n): _points(str(path), f"{where} zone {n!r}", p, least=3, most=None, relative=relative)
             for n, p in zones.items()},
            {str(n): _points(str(path), f"{where} line {n!r}", p, least=2, most=2, relative=relative)
             for n, p in lines.items()},
        )
    return ZonesSpec(interval, cameras)


def inside(points: np.ndarray, polygon: np.ndarray, *, chunk: int = 1 << 20) -> np.ndarray:
    """Whether each of ``points`` (N, 2) lies inside ``polygon`` (M, 2), even-odd ray casting,
    vectorised over points and edges (in chunks of ``chunk`` point-edge pairs). (N,) bool."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    a = np.asarray(polygon, np.float64)
    b = np.roll(a, -1, axis=0)
    out = np.zeros(len(points), bool)
    step = max(1, chunk // max(len(a), 1))
    for i in range(0, len(points), step):
        x, y = points[i : i + step, :1], points[i : i + step, 1:]
        straddles = (a[:, 1] > y) != (b[:, 1] > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
        out[i : i + step] = (np.count_nonzero(straddles & (x < x_cross), axis=1) % 2) == 1
    return out


def crossings(points0: np.ndarray, points1: np.ndarray, line: np.ndarray) -> np.ndarray:
    """For steps from ``points0`` to ``points1`` (N, 2 each): +1 where the step crosses segment
    ``line`` (A, B) from its left to its right (looking from A to B, y pointing down), -1 the
    other way, 0 where it does not cross. (N,) int8."""
    a, b = line[0], line[1]
    d = b - a
    s0 = d[0] * (points0[:, 1] - a[1]) - d[1] * (points0[:, 0] - a[0])
    s1 = d[0] * (points1[:, 1] - a[1]) - d[1] * (points1[:, 0] - a[0])
    step = points1 - points0
    denom = d[0] * step[:, 1] - d[1] * step[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = ((points0[:, 0] - a[0]) * step[:, 1] - (points0[:, 1] - a[1]) * step[:, 0]) / denom
    crossed = ((s0 <= 0) != (s1 <= 0)) & (u >= 0) & (u <= 1)
    return np.where(crossed, np.where(s1 > 0, 1, -1), 0).astype(np.int8)


def _read_detections(sink: OutputStore) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(frames: video, frame, time_s; detections: video, frame, time_s, label, track, cx, cy)."""
    parts = sink.reader.parts()
    if not parts:
        empty = pd.DataFrame({"video": pd.Series(dtype=object), "frame": pd.Series(dtype=np.int64),
                              "time_s": pd.Series(dtype=np.float64)})
        return empty, empty.assign(label=pd.Series(dtype=object), track=pd.Series(dtype=np.int64),
                                   cx=pd.Series(dtype=np.float64), cy=pd.Series(dtype=np.float64))
    table = ds.dataset(parts, format="parquet", filesystem=sink.fs).to_table(
        columns=["video", "frame", "time_s", "detections"]
    )
    dets = table.column("detections").combine_chunks()
    flat = dets.flatten()
    counts = pc.list_value_length(dets).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if len(flat) and flat.field("x1").null_count == len(flat):
        raise InputError(
            f"{sink.location}: this output keeps no face boxes (privacy: aggregate), so zones can only "
            "be computed during the run: maskjobs run ... --zones FILE"
        )
    frames = pd.DataFrame({
        "video": table.column("video").to_numpy(zero_copy_only=False),
        "frame": table.column("frame").to_numpy(),
        "time_s": table.column("time_s").to_numpy(),
    })
    row = np.repeat(np.arange(len(frames)), counts)
    box = {k: flat.field(k).to_numpy(zero_copy_only=False).astype(np.float64) for k in ("x1", "y1", "x2", "y2")}
    detections = pd.DataFrame({
        "video": frames.video.to_numpy()[row], "frame": frames.frame.to_numpy()[row],
        "time_s": frames.time_s.to_numpy()[row],
        "label": flat.field("label").to_numpy(zero_copy_only=False),
        "track": flat.field("track").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64),
        "cx": (box["x1"] + box["x2"]) / 2, "cy": (box["y1"] + box["y2"]) / 2,
    })
    return frames, detections


def _bins(df: pd.DataFrame, videos: pd.DataFrame, interval_us: int) -> pd.DataFrame:
    """``df`` (with video, time_s) with ``start`` (UTC µs of its interval, or NaN when the
    video's start is unknown) and ``start_s`` (the interval's offset in the video). Intervals
    are aligned to the local clock of the video's time zone (its offset at the start)."""
    info = videos.set_index("video")
    start_us = df.video.map(info.start_us).to_numpy(np.float64)
    offset_us = df.video.map(info.utc_offset_us).fillna(0).to_numpy(np.float64)
    t_us = np.round(df.time_s.to_numpy(np.float64) * 1e6)
    known = ~np.isnan(start_us)
    local = np.where(known, start_us + t_us + offset_us, t_us)
    first = np.floor(local / interval_us) * interval_us
    bin_utc = np.where(known, first - offset_us, np.nan)
    start_s = np.where(known, (first - offset_us - start_us) / 1e6, first / 1e6)
    return df.assign(start=bin_utc, start_s=start_s)


def _video_info(rows: pd.DataFrame) -> pd.DataFrame:
    """videos rows -> video, camera, width, height, start_us, utc_offset_us."""
    out = rows[["video", "camera", "width", "height"]].copy()
    starts = pd.to_datetime(rows["start"], utc=True) if "start" in rows else pd.Series(pd.NaT, index=rows.index)
    out["start_us"] = [s.value // 1000 if pd.notna(s) else np.nan for s in starts]
    offsets = []
    for s, tz in zip(starts, rows.get("timezone", pd.Series([None] * len(rows), index=rows.index))):
        if pd.isna(s) or not tz:
            offsets.append(0.0)
            continue
        offsets.append(s.to_pydatetime().astimezone(zone(str(tz))).utcoffset().total_seconds() * 1e6)
    out["utc_offset_us"] = offsets
    return out


def _scaled(spec: CameraZones, points: np.ndarray, width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """Detection centres in the zones' coordinates (shares of the frame when ``relative``)."""
    if not spec.relative:
        return points
    return points / np.stack([width, height], axis=1)


def _stamp(df: pd.DataFrame, column: str = "start") -> pd.Series:
    return pd.to_datetime(df[column], unit="us", utc=True)


def _summarise(frames: pd.DataFrame, dets: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per ``keys`` + (video, start, start_s): frames, faces, masked, unmasked, compliance, people,
    people_unmasked. ``frames``/``dets`` carry the keys and the interval columns."""
    group = [*keys, "video", "start_s"]
    f = frames.groupby(group, dropna=False).agg(start=("start", "first"), frames=("frame", "nunique"))
    d = dets.assign(masked=dets.label == MASK, person=dets.track.where(dets.track >= 0))
    d["person_unmasked"] = d.person.where(d.track_label == NO_MASK)
    g = d.groupby(group, dropna=False).agg(
        faces=("label", "size"), masked=("masked", "sum"), people=("person", "nunique"),
        people_unmasked=("person_unmasked", "nunique"),
    )
    out = f.join(g, how="left").fillna({"faces": 0, "masked": 0, "people": 0, "people_unmasked": 0}).reset_index()
    for c in ("faces", "masked", "people", "people_unmasked"):
        out[c] = out[c].astype(np.int64)
    out["unmasked"] = out.faces - out.masked
    out["compliance"] = (out.masked / out.faces.where(out.faces > 0)).astype("float32")
    out["start"] = _stamp(out)
    return out


def compute(
    frames: pd.DataFrame, dets: pd.DataFrame, videos: pd.DataFrame, tracks: pd.DataFrame, spec: ZonesSpec
) -> dict[str, pd.DataFrame]:
    """The zone tables (see the module docstring) from the rows. ``videos``: video, camera, width,
    height, start, timezone; ``tracks``: video, track, label."""
    info = _video_info(videos)
    interval_us = int(pd.Timedelta(spec.interval).total_seconds() * 1e6)
    labels = tracks.set_index(["video", "track"])["label"] if len(tracks) else pd.Series(dtype=object)
    dets = dets.join(labels.rename("track_label"), on=["video", "track"]) if len(labels) else dets.assign(
        track_label=None)
    camera_of = info.set_index("video").camera
    frames = _bins(frames.assign(camera=frames.video.map(camera_of)), info, interval_us)
    dets = _bins(dets.assign(camera=dets.video.map(camera_of)), info, interval_us)
    size = info.set_index("video")[["width", "height"]].astype(np.float64)
    width, height = dets.video.map(size.width).to_numpy(), dets.video.map(size.height).to_numpy()
    centres = dets[["cx", "cy"]].to_numpy(np.float64)

    in_any = np.ones(len(dets), bool)  # cameras without zones count every face
    zone_rows, zone_frames = [], []
    crossing_rows = []
    for camera, cz in spec.cameras.items():
        mine = (dets.camera == camera).to_numpy()
        pts = _scaled(cz, centres[mine], width[mine], height[mine])
        if cz.zones:
            hit_any = np.zeros(int(mine.sum()), bool)
            for name, polygon in cz.zones.items():
                hit = inside(pts, polygon)
                hit_any |= hit
                zone_rows.append(dets[mine][hit].assign(zone=name))
                zone_frames.append(frames[frames.camera == camera].assign(zone=name))
            in_any[np.flatnonzero(mine)] = hit_any
        for name, line in cz.lines.items():
            crossing_rows.append(_crossings(dets[mine].assign(px=pts[:, 0], py=pts[:, 1]), camera, name, line))

    zdets = pd.concat(zone_rows, ignore_index=True) if zone_rows else dets.iloc[:0].assign(zone="")
    zframes = pd.concat(zone_frames, ignore_index=True) if zone_frames else frames.iloc[:0].assign(zone="")
    intervals = _summarise(zframes, zdets, ["camera", "zone"])
    cameras = _summarise(frames, dets[in_any], ["camera"])
    outside = dets[~in_any].groupby(["camera", "video", "start_s"]).size().rename("faces_outside")
    cameras = cameras.join(outside, on=["camera", "video", "start_s"]).fillna({"faces_outside": 0})
    cameras["faces_outside"] = cameras.faces_outside.astype(np.int64)
    cross = pd.concat(crossing_rows, ignore_index=True) if crossing_rows else _crossings(
        dets.iloc[:0].assign(px=0.0, py=0.0), "", "", np.zeros((2, 2)))
    return {
        "intervals": intervals[["camera", "zone", "video", "start", "start_s", "frames", "faces", "masked",
                                "unmasked", "compliance", "people", "people_unmasked"]],
        "cameras": cameras[["camera", "video", "start", "start_s", "frames", "faces", "masked", "unmasked",
                            "compliance", "people", "people_unmasked", "faces_outside"]],
        "people": _people(zdets, info),
        "crossings": cross,
        "lines": _lines(cross),
    }


def _people(zdets: pd.DataFrame, info: pd.DataFrame) -> pd.DataFrame:
    d = zdets[zdets.track >= 0].sort_values(["camera", "zone", "video", "track", "frame"])
    g = d.groupby(["camera", "zone", "video", "track"], sort=True)
    out = g.agg(entered_s=("time_s", "min"), left_s=("time_s", "max"), detections=("frame", "size"),
                label=("track_label", "first"), entry_label=("label", "first")).reset_index()
    start = out.video.map(info.set_index("video").start_us).astype(np.float64)
    for col, src in (("entered", "entered_s"), ("left", "left_s")):
        out[col] = pd.to_datetime(start + np.round(out[src] * 1e6), unit="us", utc=True)
    return out[["camera", "zone", "video", "track", "label", "entry_label", "entered", "left", "entered_s",
                "left_s", "detections"]]


def _crossings(d: pd.DataFrame, camera: str, line_name: str, line: np.ndarray) -> pd.DataFrame:
    """One row per crossing of ``line`` by a track of ``d`` (px, py: centres in the line's units)."""
    d = d[d.track >= 0].sort_values(["video", "track", "frame"])
    same = (d.video.to_numpy()[1:] == d.video.to_numpy()[:-1]) & (d.track.to_numpy()[1:] == d.track.to_numpy()[:-1])
    p = d[["px", "py"]].to_numpy(np.float64)
    sign = crossings(p[:-1], p[1:], line) if len(p) > 1 else np.zeros(0, np.int8)
    hit = np.flatnonzero(same & (sign != 0)) + 1 if len(p) > 1 else np.zeros(0, np.int64)
    after = d.iloc[hit]
    return pd.DataFrame({
        "camera": camera, "line": line_name, "video": after.video.to_numpy(), "track": after.track.to_numpy(),
        "direction": np.where(sign[hit - 1] > 0, LEFT_TO_RIGHT, RIGHT_TO_LEFT) if len(hit) else np.array([], object),
        "time_s": after.time_s.to_numpy(), "start": after.start.to_numpy(np.float64),
        "start_s": after.start_s.to_numpy(np.float64), "label": after.label.to_numpy(),
        "track_label": after.track_label.to_numpy(),
    })


def _lines(cross: pd.DataFrame) -> pd.DataFrame:
    c = cross.assign(unmasked=(cross.track_label == NO_MASK).astype(np.int64))
    out = c.groupby(["camera", "line", "video", "start_s", "direction"], dropna=False).agg(
        start=("start", "first"), crossings=("track", "size"), unmasked=("unmasked", "sum")).reset_index()
    out["start"] = _stamp(out)
    return out[["camera", "line", "video", "start", "start_s", "direction", "crossings", "unmasked"]]


def _finish_crossings(cross: pd.DataFrame, info: pd.DataFrame) -> pd.DataFrame:
    start = cross.video.map(info.set_index("video").start_us).astype(np.float64)
    out = cross.assign(timestamp=pd.to_datetime(start + np.round(cross.time_s * 1e6), unit="us", utc=True))
    return out[["camera", "line", "video", "track", "direction", "time_s", "timestamp", "label", "track_label"]]


def _videos_frame(sink: OutputStore, videos: list[dict[str, Any]] | None) -> pd.DataFrame:
    if videos is not None:
        return pd.DataFrame(videos)
    if sink.layout.file_type(sink.layout.videos_file) != pafs.FileType.File:
        raise InputError(f"{sink.location}: not a finished maskjobs output (no videos.parquet)")
    table = pq.read_table(sink.layout.videos_file, filesystem=sink.fs)
    if "camera" not in table.column_names:
        raise InputError(f"{sink.location}: made by an older maskjobs (videos.parquet has no camera); run it again")
    return table.to_pandas()


def _write(sink: OutputStore, name: str, df: pd.DataFrame) -> str:
    table = pa.Table.from_pandas(df, preserve_index=False)
    for col in ("start", "timestamp", "entered", "left"):
        if col in table.column_names:
            table = table.set_column(table.schema.get_field_index(col), col, table.column(col).cast(TIMESTAMP))
    path = posixpath.join(sink.layout.zones_dir, f"{name}.parquet")
    atomic_write(sink.fs, path, lambda f: pq.write_table(table, f, compression="zstd"))
    return path


def compute_zones(
    sink: OutputStore, zones_file: Path, *, videos: list[dict[str, Any]] | None = None, interval: str | None = None
) -> dict[str, Any]:
    """Computes the zone tables of the output in ``sink`` and writes them under ``zones/``.

    ``videos``: the videos rows when they are not committed yet (``run --zones``); else read.
    Returns a summary (the file, counts, what was written) for ``job.json`` and the CLI.
    """
    spec = load_zones(zones_file, interval)
    vids = _videos_frame(sink, videos)
    frames, dets = _read_detections(sink)
    table = sink.read_tracks(["video", "track", "label"])
    tracks = table.to_pandas() if table is not None else pd.DataFrame(columns=["video", "track", "label"])
    known = set(vids.camera.dropna())
    missing = sorted(set(spec.cameras) - known)
    if missing:
        logger.warning("zones for camera(s) %s, which no video has (cameras: %s)", missing, sorted(known))
    out = compute(frames, dets, vids, tracks, spec)
    out["crossings"] = _finish_crossings(out["crossings"], _video_info(vids))
    make_dirs(sink.layout.zones_dir, fs=sink.fs)  # owner only where local
    written = [_write(sink, name, df) for name, df in out.items()]
    summary = {
        "file": str(zones_file), "interval": spec.interval,
        "cameras": len(spec.cameras), "zones": sum(len(c.zones) for c in spec.cameras.values()),
        "lines": sum(len(c.lines) for c in spec.cameras.values()), "unknown_cameras": missing,
        "rows": {name: len(df) for name, df in out.items()},
        "written": [posixpath.basename(p) for p in written],
    }
    atomic_write(sink.fs, posixpath.join(sink.layout.zones_dir, "zones.json"),
                 lambda f: f.write(json.dumps(summary, indent=2).encode()))
    return summary
