"""How a job is sized on a cluster (``size_job``): the auto settings and explicit ones."""

from __future__ import annotations

import pytest

from jobs.config import DetectorConfig, JobConfig, ResourcesConfig
from jobs.errors import ConfigError
from jobs.pipeline.sizing import Sizing, size_job


def _config(*, resources: dict | None = None, detector: dict | None = None) -> JobConfig:
    return JobConfig(resources=ResourcesConfig(**(resources or {})), detector=DetectorConfig(**(detector or {})))


def test_two_cpus_one_actor_of_two_threads_beside_one_decoder() -> None:
    assert size_job({"CPU": 2.0}, _config()) == Sizing(detector_workers=1, detector_threads=2, decoders=1)


def test_sixteen_cpus_sixty_percent_to_detectors() -> None:
    sizing = size_job({"CPU": 16.0}, _config())
    assert sizing == Sizing(detector_workers=5, detector_threads=2, decoders=11)


def test_one_cpu_and_no_cpus_listed() -> None:
    one = Sizing(detector_workers=1, detector_threads=1, decoders=1)
    assert size_job({"CPU": 1.0}, _config()) == one
    assert size_job({}, _config()) == one  # a cluster that lists no CPUs counts as one


def test_gpus_one_actor_per_detector_gpus_and_every_cpu_decodes() -> None:
    config = _config(resources={"detector_gpus": 1})
    sizing = size_job({"CPU": 16.0, "GPU": 2.0}, config)
    assert sizing.detector_workers == 2 and sizing.detector_threads is None
    assert sizing.decoders == int((16 - 2 * config.resources.detector_cpus) // config.resources.decode_cpus)
    half = size_job({"CPU": 16.0, "GPU": 2.0}, _config(resources={"detector_gpus": 0.5}))
    assert half.detector_workers == 4


def test_too_few_gpus_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="detector_gpus is 1 but the Ray cluster has 0 GPUs"):
        size_job({"CPU": 8.0}, _config(resources={"detector_gpus": 1}))


def test_explicit_settings_win() -> None:
    config = _config(resources={"detector_workers": 3, "decode_cpus": 2}, detector={"threads": 4})
    sizing = size_job({"CPU": 16.0}, config)
    assert sizing.detector_workers == 3 and sizing.detector_threads == 4
    assert sizing.decoders == int((16 - 3 * config.resources.detector_cpus) // 2)


def test_at_least_one_decoder_when_actors_take_every_cpu() -> None:
    sizing = size_job({"CPU": 4.0}, _config(resources={"detector_workers": 8}))
    assert sizing.detector_workers == 8 and sizing.decoders == 1
