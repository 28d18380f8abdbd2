"""The job's configuration: ``configs/default.yaml`` + ``--config FILE`` + flags, resolved once.

The result is a frozen :class:`JobConfig`, validated in one place; a bad value is a
:class:`~jobs.errors.ConfigError` (one line, exit 2). It is passed down explicitly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from jobs.errors import ConfigError, one_line


@dataclass(frozen=True)
class SamplingConfig:
    stride: int = 1
    fps: float | None = None
    keyframes: bool = False  # only the keyframes the container lists (decodes nothing else)


@dataclass(frozen=True)
class DetectorConfig:
    weights: str | None = None
    batch_size: int | None = None  # None: 16 on CPU, sized to the card on GPU
    score_threshold: float = 0.5
    iou_threshold: float = 0.4
    device: str = "auto"
    half: bool = True
    threads: int | None = None
    int8: bool = False
    calibration_frames: int = 32
    int8_margin: float = 0.05
    tiles: str = "off"  # "off", "auto" or ROWSxCOLS: overlapping tiles beside the whole frame (detector/tiling.py)
    tiles_target_px: float = 32.0  # tiles "auto": the narrowest face (px) to be reliably found


@dataclass(frozen=True)
class ResourcesConfig:
    detector_workers: int | None = None
    detector_cpus: float = 1
    detector_gpus: float = 0
    decode_cpus: float = 1
    decode_threads: int = 1


@dataclass(frozen=True)
class PlanningConfig:
    shard_frames: int = 1024
    pack_frames: int = 512
    probe_timeout_s: float = 60
    shard_timeout_s: float = 300
    max_retries: int = 2
    inflight_batches: int = 4


@dataclass(frozen=True)
class TrackingConfig:
    """Keyword arguments of :class:`jobs.results.bytetrack.ByteTracker` (see there)."""

    high_score: float = 0.7
    match_iou: float = 0.3
    low_match_iou: float = 0.5
    buffer: float = 0.3
    max_age: int = 15
    min_hits: int = 2


@dataclass(frozen=True)
class AnnotateConfig:
    enabled: bool = False
    crf: int = 23
    preset: str = "veryfast"


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    object_store_mb: int = 1024


@dataclass(frozen=True)
class MetadataConfig:
    """Where each video's wall-clock start and camera come from (:mod:`jobs.metadata`)."""

    start_times: str | None = None  # CSV or YAML file: video -> start, timezone[, camera]
    time_pattern: str | None = None  # regex on the file name with a group named ``start``
    time_format: str = "%Y%m%d_%H%M%S"  # strptime format of that group
    timezone: str | None = "UTC"  # zone of times given without one
    creation_time: bool = True  # else: the container's creation_time tag is not read
    camera_pattern: str | None = None  # regex on the video id with a group named ``camera``
    cameras: dict[str, str] | None = None  # video id, file name or folder -> camera


PRIVACY_MODES = ("blur", "pixelate", "raw", "aggregate")


@dataclass(frozen=True)
class PrivacyConfig:
    """What of the faces the output keeps (:mod:`jobs.results.privacy`)."""

    mode: str = "blur"  # blur | pixelate | raw | aggregate


@dataclass(frozen=True)
class ZonesConfig:
    file: str | None = None  # zones YAML applied at the end of the run (``run --zones``)


@dataclass(frozen=True)
class JobConfig:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    planning: PlanningConfig = field(default_factory=PlanningConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    zones: ZonesConfig = field(default_factory=ZonesConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def result_fingerprint(self, weights_sha256: str) -> str:
        """What decides the output's rows: sampling, thresholds and the weights, nothing else.

        Tracking and annotation are not in it: every run recomputes them from the rows.
        """
        sampling = dataclasses.asdict(self.sampling)
        if not sampling["keyframes"]:  # absent unless set, so older outputs keep their fingerprint
            del sampling["keyframes"]
        key = {
            "sampling": sampling,
            "score_threshold": self.detector.score_threshold,
            "iou_threshold": self.detector.iou_threshold,
            "weights_sha256": weights_sha256,
        }
        if self.detector.int8:  # absent for float32, so older outputs keep their fingerprint
            key["int8_margin"] = self.detector.int8_margin
        if _tiled(self.detector.tiles):  # absent whole-frame, so older outputs keep their fingerprint
            key["tiles"] = [self.detector.tiles, self.detector.tiles_target_px]
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


_SECTIONS = {f.name: f.type for f in dataclasses.fields(JobConfig)}
_CLASSES = {
    "sampling": SamplingConfig,
    "detector": DetectorConfig,
    "resources": ResourcesConfig,
    "planning": PlanningConfig,
    "tracking": TrackingConfig,
    "annotate": AnnotateConfig,
    "ray": RayConfig,
    "metadata": MetadataConfig,
    "privacy": PrivacyConfig,
    "zones": ZonesConfig,
}


def read_yaml_mapping(
    source: str, text: str, *, expected: str, error: type[Exception] = ConfigError
) -> dict[str, Any]:
    """``text`` (YAML, ``source`` names it) as a mapping; an empty document is ``{}``. Anything
    else is ``error``: ``"{source}: not valid YAML (...)"`` or ``"{source}: {expected}"``."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise error(f"{source}: {expected}")
    return data


def _read_yaml(source: str, text: str) -> dict[str, Any]:
    return read_yaml_mapping(source, text, expected="expected a mapping of sections at the top level")


def _default_dict() -> dict[str, Any]:
    text = resources.files("configs").joinpath("default.yaml").read_text()
    return _read_yaml("configs/default.yaml", text)


def _merge(base: dict[str, Any], over: dict[str, Any], source: str) -> dict[str, Any]:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in over.items():
        if section not in _CLASSES:
            raise ConfigError(f"{source}: unknown section {section!r} (known: {', '.join(_CLASSES)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        known = {f.name for f in dataclasses.fields(_CLASSES[section])}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown key {section}.{key}")
            out.setdefault(section, {})[key] = value
    return out


def _coerce(section: str, key: str, value: Any, kind: type) -> Any:
    if value is None:
        return None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is dict:
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items()}
            raise ValueError
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config {section}.{key}: {value!r} is not a valid {kind.__name__}") from None


_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "dict[str, str]": dict}


def _build(data: dict[str, Any]) -> JobConfig:
    sections = {}
    for name, cls in _CLASSES.items():
        values = {}
        for f in dataclasses.fields(cls):
            base = str(f.type).split("|")[0].strip()
            values[f.name] = _coerce(name, f.name, data.get(name, {}).get(f.name, f.default), _TYPES[base])
        sections[name] = cls(**values)
    return JobConfig(**sections)


def _validate(cfg: JobConfig) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"config {message}")

    s, d, r, p = cfg.sampling, cfg.detector, cfg.resources, cfg.planning
    need(s.stride >= 1, f"sampling.stride must be >= 1, got {s.stride}")
    need(s.fps is None or s.fps > 0, f"sampling.fps must be > 0, got {s.fps}")
    need(s.fps is None or s.stride == 1, "sampling: give either stride or fps, not both")
    need(not s.keyframes or (s.fps is None and s.stride == 1), "sampling: keyframes takes no stride or fps")
    need(d.batch_size is None or d.batch_size >= 1, f"detector.batch_size must be >= 1, got {d.batch_size}")
    need(0 <= d.score_threshold <= 1, f"detector.score_threshold must be in [0, 1], got {d.score_threshold}")
    need(0 <= d.iou_threshold <= 1, f"detector.iou_threshold must be in [0, 1], got {d.iou_threshold}")
    need(d.device in ("auto", "cpu", "cuda"), f"detector.device must be auto, cpu or cuda, got {d.device!r}")
    need(d.threads is None or d.threads >= 1, f"detector.threads must be >= 1, got {d.threads}")
    need(d.calibration_frames >= 1, f"detector.calibration_frames must be >= 1, got {d.calibration_frames}")
    need(0 <= d.int8_margin < 0.5, f"detector.int8_margin must be in [0, 0.5), got {d.int8_margin}")
    need(_tiles_ok(d.tiles), f"detector.tiles must be off, auto or ROWSxCOLS like 3x3, got {d.tiles!r}")
    need(d.tiles_target_px > 0, f"detector.tiles_target_px must be > 0, got {d.tiles_target_px}")
    need(not (d.int8 and r.detector_gpus > 0), "detector.int8 runs on CPUs; GPUs use detector.half (set one of them)")
    need(r.detector_workers is None or r.detector_workers >= 1, "resources.detector_workers must be >= 1")
    need(r.detector_cpus >= 0 and r.decode_cpus >= 0 and r.detector_gpus >= 0, "resources must not be negative")
    need(r.decode_threads >= 1, "resources.decode_threads must be >= 1")
    need(p.shard_frames >= 1 and p.pack_frames >= 0, "planning.shard_frames must be >= 1")
    need(p.probe_timeout_s > 0 and p.shard_timeout_s > 0, "planning timeouts must be > 0")
    need(p.max_retries >= 0, "planning.max_retries must be >= 0")
    need(p.inflight_batches >= 1, "planning.inflight_batches must be >= 1")
    t = cfg.tracking
    need(0 <= t.high_score <= 1, f"tracking.high_score must be in [0, 1], got {t.high_score}")
    need(0 < t.match_iou <= 1 and 0 < t.low_match_iou <= 1, "tracking.match_iou and low_match_iou must be in (0, 1]")
    need(t.buffer >= 0, f"tracking.buffer must be >= 0, got {t.buffer}")
    need(t.max_age >= 0 and t.min_hits >= 1, "tracking.max_age must be >= 0 and tracking.min_hits >= 1")
    need(0 <= cfg.annotate.crf <= 51, f"annotate.crf must be in [0, 51], got {cfg.annotate.crf}")
    need(cfg.ray.object_store_mb >= 80, "ray.object_store_mb must be >= 80")
    need(cfg.privacy.mode in PRIVACY_MODES, f"privacy.mode must be one of {', '.join(PRIVACY_MODES)}, "
         f"got {cfg.privacy.mode!r}")
    need(not (cfg.privacy.mode == "aggregate" and cfg.annotate.enabled),
         "privacy.mode aggregate keeps no pictures: it cannot be used with --annotate")


def _tiled(text: str) -> bool:
    """Whether ``detector.tiles`` asks for tiles (YAML reads a bare ``off`` as false: also off)."""
    from detector.tiling import parse_tiles

    return parse_tiles(text) is not None


def _tiles_ok(text: str) -> bool:
    from detector.tiling import parse_tiles

    try:
        parse_tiles(text)
    except ValueError:
        return False
    return True


def resolve_config(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> JobConfig:
    """Defaults, then ``config_file``, then ``overrides`` (``{"section.key": value}``; None = unset)."""
    data = _default_dict()
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"{config_file}: no such config file")
        data = _merge(data, _read_yaml(str(config_file), config_file.read_text()), str(config_file))
    flat: dict[str, dict[str, Any]] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        flat.setdefault(section, {})[key] = value
    data = _merge(data, flat, "command line")
    if (overrides or {}).get("sampling.fps") is not None and (overrides or {}).get("sampling.stride") is None:
        data["sampling"]["stride"] = 1  # --fps replaces a stride from the config file
    cfg = _build(data)
    _validate(cfg)
    return cfg
