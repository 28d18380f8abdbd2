"""Each video's wall-clock start and camera: where and when its frames were filmed.

A video's start comes, in this order, from

1. the per-run mapping (``metadata.start_times``: a CSV or YAML file, video -> start and time zone),
2. the file-name pattern (``metadata.time_pattern`` with a group named ``start``, parsed with
   ``metadata.time_format``: NVR exports such as ``cam3_20260315_080000.mp4``),
3. the container's ``creation_time`` tag (read with FFmpeg, the binary imageio-ffmpeg ships),

and is otherwise unknown (None): it is never guessed. Times without a zone or offset are in
``metadata.timezone``. Starts are kept as UTC instants with the zone they were given in, so a
report can say the local hour of day.

A video's camera comes from the ``metadata.cameras`` mapping (video id, file name or folder ->
camera), a column ``camera`` of the start-times file, the ``metadata.camera_pattern`` regex (a
group named ``camera``, searched in the video id), or else the folder the video sits in (its
file name's stem for a video given directly).
"""

from __future__ import annotations

import csv
import io
import logging
import posixpath
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jobs.config import read_yaml_mapping
from jobs.errors import ConfigError, InputError, one_line

logger = logging.getLogger(__name__)

SOURCE_MAPPING = "mapping"
SOURCE_FILE_NAME = "file_name"
SOURCE_CREATION_TIME = "creation_time"

_CREATION_TIME = re.compile(r"^\s*creation_time\s*:\s*(\S+)\s*$", re.M)


@dataclass(frozen=True)
class VideoMeta:
    """Where and when one video was filmed.

    Attributes:
        camera: the camera/site id.
        start: the first frame's wall-clock time (timezone-aware), or None when unknown.
        timezone: the zone ``start`` was given in (an IANA name or ``+HH:MM``), None when unknown.
        source: where ``start`` came from (``mapping``, ``file_name``, ``creation_time``) or None.
    """

    camera: str
    start: datetime | None = None
    timezone: str | None = None
    source: str | None = None

    @property
    def start_us(self) -> int | None:
        """``start`` in microseconds since the Unix epoch (UTC), or None."""
        if self.start is None:
            return None
        delta = self.start.astimezone(timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def zone(name: str) -> tzinfo:
    """The tzinfo of ``name``: an IANA zone (``Europe/Paris``), ``UTC`` or an offset (``+01:00``).

    Raises :class:`ValueError` for anything else."""
    m = re.fullmatch(r"(?:UTC)?([+-])(\d{1,2}):?(\d{2})?", name.strip())
    if m:
        sign = -1 if m.group(1) == "-" else 1
        return timezone(sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3) or 0)))
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


def _offset_name(dt: datetime) -> str:
    off = dt.utcoffset() or timedelta(0)
    if off == timedelta(0):
        return "UTC"
    minutes = int(off.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def parse_time(text: str, tz_name: str | None, *, fmt: str | None = None) -> tuple[datetime, str]:
    """``text`` (ISO 8601, or ``fmt`` for strptime) as an aware datetime, and its zone's name.

    An offset in ``text`` wins; else ``tz_name`` applies. Raises :class:`ValueError`."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    dt = datetime.strptime(text, fmt) if fmt else datetime.fromisoformat(text)
    if dt.tzinfo is not None:
        same = tz_name is not None and zone(tz_name).utcoffset(dt.replace(tzinfo=None)) == dt.utcoffset()
        return dt, tz_name.strip() if same else _offset_name(dt)  # type: ignore[union-attr]
    if tz_name is None:
        raise ValueError(f"{text!r} has no time zone and none is given")
    return dt.replace(tzinfo=zone(tz_name)), tz_name.strip()


@dataclass(frozen=True)
class _Entry:
    start: datetime | None
    timezone: str | None
    camera: str | None


def read_start_times(path: Path, default_tz: str | None) -> dict[str, _Entry]:
    """The per-run mapping file: ``{video key: entry}``.

    CSV: a header with ``video`` and ``start`` (ISO 8601), optional ``timezone`` and ``camera``.
    YAML: ``{video: "2026-03-15T08:00:00"}`` or ``{video: {start: ..., timezone: ..., camera: ...}}``.
    A key is a video id, a file name or a folder of the input. Raises :class:`InputError`
    naming the file and the cause.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the start-times file ({one_line(exc)})") from None
    rows: list[tuple[str, dict[str, Any]]]
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        data = read_yaml_mapping(str(path), text, expected="expected a mapping of video -> start time", error=InputError)
        rows = [(str(k), v if isinstance(v, dict) else {"start": v}) for k, v in data.items()]
    else:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "video" not in reader.fieldnames:
            raise InputError(f"{path}: a CSV of start times needs a header with columns video,start[,timezone,camera]")
        rows = [(str(r["video"]), r) for r in reader]
    out: dict[str, _Entry] = {}
    for line, (key, row) in enumerate(rows, start=2):
        start, tz_name, camera = row.get("start"), row.get("timezone") or None, row.get("camera") or None
        dt = None
        if start not in (None, ""):
            if isinstance(start, datetime):  # YAML reads unquoted timestamps itself
                start = start.isoformat()
            try:
                dt, tz_name = parse_time(str(start), str(tz_name) if tz_name else default_tz)
            except ValueError as exc:
                raise InputError(f"{path}: entry {key!r} (row {line}): {one_line(exc)}") from None
        out[key] = _Entry(dt, tz_name if dt is not None else None, str(camera) if camera else None)
    return out


def _lookup(table: Mapping[str, Any], video: str) -> Any:
    """The entry for ``video`` (an id): by id, by file name, then by each enclosing folder."""
    if video in table:
        return table[video]
    name = posixpath.basename(video)
    if name in table:
        return table[name]
    folder = posixpath.dirname(video)
    while folder:
        for key in (folder, folder + "/"):
            if key in table:
                return table[key]
        folder = posixpath.dirname(folder)
    return None


def default_camera(video: str, path: str | None = None) -> str:
    """The name of the folder the video sits in: of its ``path`` when given, else of its id
    (``video``), else the id's file name stem."""
    if path:
        folder = Path(path).parent.name
        if folder:
            return folder
    folder = posixpath.basename(posixpath.dirname(video))
    return folder or posixpath.splitext(posixpath.basename(video))[0]


def creation_time(path: str, *, timeout_s: float = 30.0) -> datetime | None:
    """The container's ``creation_time`` tag (UTC, aware), as FFmpeg prints it; None when absent
    or unreadable (a file FFmpeg cannot open has none)."""
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.info("%s: no creation_time (%s)", path, one_line(exc))
        return None
    m = _CREATION_TIME.search(proc.stderr.decode("utf-8", errors="replace"))
    if not m:
        return None
    try:
        dt, _ = parse_time(m.group(1), "UTC")
    except ValueError:
        return None
    # muxers write 1970-01-01 / 1904-01-01 when they know no time: that is not a start
    return dt if dt.year > 1990 else None


@dataclass(frozen=True)
class MetadataResolver:
    """Resolves :class:`VideoMeta` from the job's ``metadata`` config (see the module docstring)."""

    start_times: dict[str, _Entry]
    cameras: Mapping[str, str]
    time_pattern: re.Pattern[str] | None
    time_format: str
    timezone: str | None
    camera_pattern: re.Pattern[str] | None
    use_creation_time: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> MetadataResolver:
        """From a :class:`jobs.config.MetadataConfig`; raises ConfigError/InputError on bad values."""
        def compile_(name: str, value: str | None, group: str) -> re.Pattern[str] | None:
            if value is None:
                return None
            try:
                pattern = re.compile(value)
            except re.error as exc:
                raise ConfigError(f"config metadata.{name}: not a regular expression ({exc})") from None
            if group not in pattern.groupindex:
                raise ConfigError(f"config metadata.{name}: needs a group named {group!r}, e.g. (?P<{group}>...)")
            return pattern

        if cfg.timezone is not None:
            try:
                zone(cfg.timezone)
            except ValueError as exc:
                raise ConfigError(f"config metadata.timezone: {exc}") from None
        return cls(
            start_times=read_start_times(Path(cfg.start_times), cfg.timezone) if cfg.start_times else {},
            cameras=dict(cfg.cameras or {}),
            time_pattern=compile_("time_pattern", cfg.time_pattern, "start"),
            time_format=cfg.time_format,
            timezone=cfg.timezone,
            camera_pattern=compile_("camera_pattern", cfg.camera_pattern, "camera"),
            use_creation_time=cfg.creation_time,
        )

    def camera(self, video: str, path: str | None = None) -> str:
        """``video``'s camera (``path``: its file, whose folder is the default)."""
        found = _lookup(self.cameras, video)
        if found is None and path:
            found = self.cameras.get(Path(path).parent.name)
        if found is not None:
            return str(found)
        entry = _lookup(self.start_times, video)
        if entry is not None and entry.camera:
            return entry.camera
        if self.camera_pattern is not None and (m := self.camera_pattern.search(video)) and m.group("camera"):
            return m.group("camera")
        return default_camera(video, path)

    def from_name(self, video: str) -> tuple[datetime, str] | None:
        """The start encoded in ``video``'s file name, or None."""
        if self.time_pattern is None:
            return None
        m = self.time_pattern.search(posixpath.basename(video))
        if not m:
            return None
        try:
            return parse_time(m.group("start"), self.timezone, fmt=self.time_format)
        except ValueError as exc:
            logger.warning("%s: file-name time %r not read (%s)", video, m.group("start"), one_line(exc))
            return None

    def needs_container(self, video: str) -> bool:
        """Whether ``video``'s start must come from its container (no mapping or name gives it)."""
        entry = _lookup(self.start_times, video)
        return (
            self.use_creation_time and (entry is None or entry.start is None) and self.from_name(video) is None
        )

    def resolve(self, video: str, created: datetime | None = None, path: str | None = None) -> VideoMeta:
        """``video``'s meta; ``created`` is its container's creation_time when that was read,
        ``path`` its file."""
        camera = self.camera(video, path)
        entry = _lookup(self.start_times, video)
        if entry is not None and entry.start is not None:
            return VideoMeta(camera, entry.start, entry.timezone, SOURCE_MAPPING)
        named = self.from_name(video)
        if named is not None:
            return VideoMeta(camera, named[0], named[1], SOURCE_FILE_NAME)
        if created is not None:
            tz_name = self.timezone or "UTC"
            return VideoMeta(camera, created.astimezone(zone(tz_name)), tz_name, SOURCE_CREATION_TIME)
        return VideoMeta(camera)


def resolve_all(
    ray: Any, videos: list[Any], resolver: MetadataResolver, *, created: Mapping[str, datetime | None] | None = None
) -> dict[str, VideoMeta]:
    """``{video id: VideoMeta}`` for ``videos`` (:class:`jobs.inputs.VideoInput`). Container tags
    already read (``created``, ``{video id: creation_time or None}``: a job's probes read them)
    are used as they are; the others are read in Ray tasks (the workers see the files), in
    parallel, only where needed."""
    created = dict(created or {})
    need = [v for v in videos if resolver.needs_container(v.video) and v.video not in created]
    if need:
        remote = ray.remote(num_cpus=0.25, max_retries=0)(creation_time)
        refs = {v.video: remote.remote(v.path) for v in need}
        for video, ref in refs.items():
            try:
                created[video] = ray.get(ref, timeout=120)
            except Exception as exc:  # a Ray error: the task died or timed out; the start stays unknown
                logger.warning("%s: creation_time not read (%s)", video, one_line(exc, limit=200))
                created[video] = None
    return {v.video: resolver.resolve(v.video, created.get(v.video), v.path) for v in videos}


def video_meta_columns(meta: VideoMeta, duration_s: float | None) -> dict[str, Any]:
    """``videos.parquet``'s columns for ``meta``: ``camera``, ``start``, ``end`` (start + duration),
    ``start_source`` and ``timezone``."""
    start = meta.start.astimezone(timezone.utc) if meta.start is not None else None
    end = start + timedelta(seconds=float(duration_s)) if start is not None and duration_s is not None else None
    return {"camera": meta.camera, "start": start, "end": end, "start_source": meta.source, "timezone": meta.timezone}
