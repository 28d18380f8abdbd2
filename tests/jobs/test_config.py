"""The job's configuration (``jobs.config.resolve_config``): flags over ``--config FILE`` over
``configs/default.yaml``, and every bad value a one-line :class:`ConfigError` naming its key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from jobs.config import JobConfig, PlanningConfig, SamplingConfig, resolve_config
from jobs.errors import ConfigError, InputError


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str | None = None, overrides: dict[str, Any] | None = None) -> str:
    """The message of the ConfigError that resolving ``text`` (a config file) and ``overrides``
    raises; it must be one line."""
    with pytest.raises(ConfigError) as info:
        resolve_config(_file(tmp_path, text) if text is not None else None, overrides)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_the_defaults_file_equals_the_dataclass_defaults() -> None:
    """configs/default.yaml documents every default; the dataclasses hold the same values."""
    assert resolve_config() == JobConfig()


def test_a_partial_file_is_merged_over_the_defaults(tmp_path: Path) -> None:
    cfg = resolve_config(_file(tmp_path, "planning:\n  shard_frames: 40\n  pack_frames: 40\ndetector:\n  int8: true\n"))
    assert cfg.planning == dataclasses.replace(PlanningConfig(), shard_frames=40, pack_frames=40)
    assert cfg.detector.int8 is True and cfg.detector.score_threshold == 0.5
    assert cfg.sampling == SamplingConfig() and cfg.tracking == JobConfig().tracking


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "sampling: {}\n"])
def test_an_empty_file_or_section_changes_nothing(tmp_path: Path, text: str) -> None:
    assert resolve_config(_file(tmp_path, text)) == JobConfig()


def test_flags_override_the_file_and_unset_flags_do_not(tmp_path: Path) -> None:
    path = _file(tmp_path, "sampling:\n  stride: 3\nplanning:\n  shard_frames: 40\nray:\n  num_cpus: 4\n")
    cfg = resolve_config(path, {"planning.shard_frames": 7, "ray.num_cpus": None, "detector.weights": "w.pth"})
    assert cfg.planning.shard_frames == 7  # the flag wins
    assert cfg.ray.num_cpus == 4  # None means "flag not given": the file's value stays
    assert cfg.sampling.stride == 3 and cfg.detector.weights == "w.pth"


def test_fps_from_a_flag_replaces_a_stride_from_the_file(tmp_path: Path) -> None:
    cfg = resolve_config(_file(tmp_path, "sampling:\n  stride: 3\n"), {"sampling.fps": 10})
    assert cfg.sampling == SamplingConfig(stride=1, fps=10.0)


def test_fps_and_stride_together_are_refused(tmp_path: Path) -> None:
    assert "give either stride or fps" in _error(tmp_path, None, {"sampling.fps": 10, "sampling.stride": 2})
    assert "give either stride or fps" in _error(tmp_path, "sampling:\n  stride: 2\n  fps: 5\n")


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("2.0", "int", 2),  # a whole float is an int
        ("'16'", "int", 16),  # so is a quoted number
        ("1", "float", 1.0),
        ("null", "int", None),
    ],
)
def test_values_are_coerced_to_the_field_type(tmp_path: Path, value: str, kind: str, expected: object) -> None:
    key = {"int": "batch_size", "float": "score_threshold"}[kind]
    got = getattr(resolve_config(_file(tmp_path, f"detector:\n  {key}: {value}\n")).detector, key)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("samplng:\n  stride: 2\n", "unknown section 'samplng'"),
        ("sampling:\n  strid: 2\n", "unknown key sampling.strid"),
        ("sampling: 2\n", "section 'sampling' must be a mapping"),
        ("- sampling\n", "expected a mapping of sections at the top level"),
        ("detector: [1, 2\n", "not valid YAML"),
        ("sampling:\n  stride: two\n", "config sampling.stride: 'two' is not a valid int"),
        ("sampling:\n  stride: 2.5\n", "config sampling.stride: 2.5 is not a valid int"),
        ("sampling:\n  stride: true\n", "config sampling.stride: True is not a valid int"),
        ("detector:\n  half: 1\n", "config detector.half: 1 is not a valid bool"),
        ("detector:\n  score_threshold: false\n", "config detector.score_threshold: False is not a valid float"),
        ("sampling:\n  stride: 0\n", "sampling.stride must be >= 1, got 0"),
        ("sampling:\n  fps: 0\n", "sampling.fps must be > 0"),
        ("detector:\n  score_threshold: 2\n", "detector.score_threshold must be in [0, 1], got 2.0"),
        ("detector:\n  iou_threshold: -0.1\n", "detector.iou_threshold must be in [0, 1]"),
        ("detector:\n  batch_size: 0\n", "detector.batch_size must be >= 1"),
        ("detector:\n  device: tpu\n", "detector.device must be auto, cpu or cuda, got 'tpu'"),
        ("detector:\n  threads: 0\n", "detector.threads must be >= 1"),
        ("detector:\n  int8_margin: 0.5\n", "detector.int8_margin must be in [0, 0.5)"),
        ("detector:\n  int8: true\nresources:\n  detector_gpus: 1\n", "detector.int8 runs on CPUs"),
        ("resources:\n  decode_cpus: -1\n", "resources must not be negative"),
        ("resources:\n  decode_threads: 0\n", "resources.decode_threads must be >= 1"),
        ("planning:\n  shard_frames: 0\n", "planning.shard_frames must be >= 1"),
        ("planning:\n  max_retries: -1\n", "planning.max_retries must be >= 0"),
        ("planning:\n  shard_timeout_s: 0\n", "planning timeouts must be > 0"),
        ("tracking:\n  match_iou: 0\n", "tracking.match_iou and low_match_iou must be in (0, 1]"),
        ("annotate:\n  crf: 52\n", "annotate.crf must be in [0, 51], got 52"),
        ("ray:\n  object_store_mb: 10\n", "ray.object_store_mb must be >= 80"),
    ],
)
def test_bad_files_are_one_line_config_errors_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _error(tmp_path, text)


def test_file_errors_name_the_file_and_flag_errors_the_command_line(tmp_path: Path) -> None:
    assert _error(tmp_path, "sampling:\n  strid: 2\n").startswith(f"{tmp_path / 'job.yaml'}: ")
    assert _error(tmp_path, None, {"sampling.strid": 2}) == "command line: unknown key sampling.strid"
    assert "config detector.batch_size: 'x' is not a valid int" in _error(tmp_path, None, {"detector.batch_size": "x"})


def test_a_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file") as info:
        resolve_config(tmp_path / "absent.yaml")
    assert str(tmp_path / "absent.yaml") in str(info.value)


def test_config_errors_are_input_errors_with_exit_code_2() -> None:
    assert issubclass(ConfigError, InputError) and ConfigError("x").exit_code == 2


def test_the_result_fingerprint_covers_what_decides_the_rows_only() -> None:
    base = JobConfig()
    fp = base.result_fingerprint("abc")
    assert len(fp) == 16 and fp == JobConfig().result_fingerprint("abc")
    assert base.result_fingerprint("abd") != fp
    for section, change in [("sampling", {"stride": 2}), ("detector", {"score_threshold": 0.6}),
                            ("detector", {"iou_threshold": 0.5})]:
        other = dataclasses.replace(base, **{section: dataclasses.replace(getattr(base, section), **change)})
        assert other.result_fingerprint("abc") != fp, (section, change)
    # tracking, annotation, planning and resources do not change the rows: every run recomputes or ignores them
    for section, change in [("tracking", {"max_age": 3}), ("annotate", {"enabled": True}),
                            ("planning", {"shard_frames": 8}), ("resources", {"decode_threads": 2}),
                            ("detector", {"int8_margin": 0.01})]:
        other = dataclasses.replace(base, **{section: dataclasses.replace(getattr(base, section), **change)})
        assert other.result_fingerprint("abc") == fp, (section, change)
    int8 = dataclasses.replace(base, detector=dataclasses.replace(base.detector, int8=True))
    assert int8.result_fingerprint("abc") != fp  # the margin joins the key once int8 is on
    margin = dataclasses.replace(int8, detector=dataclasses.replace(int8.detector, int8_margin=0.02))
    assert margin.result_fingerprint("abc") != int8.result_fingerprint("abc")


def test_to_dict_has_every_section_and_key() -> None:
    data = JobConfig().to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(JobConfig)}
    assert data["planning"]["shard_frames"] == 1024 and data["sampling"] == {"stride": 1, "fps": None, "keyframes": False}


@pytest.mark.parametrize(("value", "expected"), [("3x3", "3x3"), ("auto", "auto"), (None, "off")])
def test_tiles_is_a_detector_setting(value: str | None, expected: str) -> None:
    assert resolve_config(None, {"detector.tiles": value}).detector.tiles == expected


@pytest.mark.parametrize("bad", ["3", "0x2", "big", "3x3x3"])
def test_bad_tiles_are_one_line_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="detector.tiles must be off, auto or ROWSxCOLS") as info:
        resolve_config(None, {"detector.tiles": bad})
    assert "\n" not in str(info.value) and bad in str(info.value)


def test_tiles_join_the_fingerprint_only_when_on(tmp_path: Path) -> None:
    base = JobConfig()
    fp = base.result_fingerprint("abc")
    off = tmp_path / "off.yaml"
    off.write_text("detector:\n  tiles: off\n")  # YAML reads a bare off as false: still off
    assert resolve_config(off).result_fingerprint("abc") == fp
    tiled = dataclasses.replace(base, detector=dataclasses.replace(base.detector, tiles="4x4"))
    assert tiled.result_fingerprint("abc") != fp
    auto = dataclasses.replace(base, detector=dataclasses.replace(base.detector, tiles="auto"))
    assert auto.result_fingerprint("abc") not in (fp, tiled.result_fingerprint("abc"))


def test_keyframes_sampling_from_the_file_or_a_flag_and_alone(tmp_path: Path) -> None:
    assert resolve_config(None, {"sampling.keyframes": True}).sampling == SamplingConfig(keyframes=True)
    assert resolve_config(_file(tmp_path, "sampling:\n  keyframes: true\n")).sampling.keyframes
    assert "keyframes takes no stride or fps" in _error(tmp_path, None, {"sampling.keyframes": True, "sampling.stride": 15})
    assert "keyframes takes no stride or fps" in _error(tmp_path, "sampling:\n  keyframes: true\n  fps: 2\n")


def test_keyframes_joins_the_fingerprint_only_when_on() -> None:
    """Outputs written before ``sampling.keyframes`` existed keep their fingerprint (it is
    left out when off), and a keyframes output is not mistaken for an every-frame one."""
    import hashlib
    import json

    base = JobConfig()
    old_key = {"sampling": {"stride": 1, "fps": None}, "score_threshold": 0.5, "iou_threshold": 0.4, "weights_sha256": "abc"}
    assert base.result_fingerprint("abc") == hashlib.sha256(json.dumps(old_key, sort_keys=True).encode()).hexdigest()[:16]
    keys = dataclasses.replace(base, sampling=SamplingConfig(keyframes=True))
    assert keys.result_fingerprint("abc") != base.result_fingerprint("abc")
