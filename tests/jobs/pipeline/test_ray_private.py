"""Ray's private surfaces fall back to the public path: on a Ray they were not tested on, and
when they raise. The embedded Ray still starts, leaves nothing behind, and a job still runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from benchmarks.videogen import write_video
from jobs.cli.main import app
from jobs.config import RayConfig
from jobs.pipeline import ray_private, session
from jobs.pipeline.session import ray_session
from tests.jobs.pipeline.rayprocs import none_left, ray_processes

pytestmark = pytest.mark.slow  # starts an embedded Ray and runs jobs on real videos

PRIVATE_OPTION = "_generator_backpressure_num_objects"


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fallback warns once per process: start from none warned."""
    monkeypatch.setattr(ray_private, "_warned", set())


@pytest.fixture
def options_seen(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every ``options(...)`` call on a Ray remote function, recorded (and still made)."""
    from ray.remote_function import RemoteFunction

    seen: list[dict] = []
    real = RemoteFunction.options

    def recording(self, **options):
        seen.append(options)
        return real(self, **options)

    monkeypatch.setattr(RemoteFunction, "options", recording)
    return seen


def _run_small_job(tmp_path: Path, scene, ffmpeg: str, caffe_weights: Path) -> pd.DataFrame:
    clip = write_video(tmp_path / "clip.mp4", scene, 24, ffmpeg=ffmpeg)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["run", str(clip), "--out", str(out), "--weights", str(caffe_weights)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return pd.read_parquet(out / "frames")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ray_private.__name__ and r.levelno == logging.WARNING]


def test_an_untested_ray_takes_the_public_paths_and_runs_a_job(
    monkeypatch: pytest.MonkeyPatch, fresh_warnings, options_seen: list[dict], caplog: pytest.LogCaptureFixture,
    tmp_path: Path, scene, ffmpeg: str, caffe_weights: Path,
) -> None:
    monkeypatch.setattr(ray_private, "ray_version", lambda: "2.99.0")
    patched: list[bool] = []
    real_patches = session._without_http_api_and_autoscaler

    def spying():
        patched.append(True)
        return real_patches()

    monkeypatch.setattr(session, "_without_http_api_and_autoscaler", spying)
    caplog.set_level(logging.WARNING, logger=ray_private.__name__)
    frames = _run_small_job(tmp_path, scene, ffmpeg, caffe_weights)
    assert sorted(frames["frame"]) == list(range(24))
    assert patched == []  # Ray started as Ray does
    assert options_seen and not any(PRIVATE_OPTION in o for o in options_seen)
    warned = _warnings(caplog)
    assert len(warned) == 2 and all("Ray 2.99.0 is not one it was tested on" in w for w in warned)
    assert none_left()


def test_private_surfaces_that_raise_fall_back_and_a_job_runs(
    monkeypatch: pytest.MonkeyPatch, fresh_warnings, caplog: pytest.LogCaptureFixture,
    tmp_path: Path, scene, ffmpeg: str, caffe_weights: Path,
) -> None:
    """On the tested Ray: a start-up patch that raises inside ``ray.init`` (after Ray has
    started its GCS) and a backpressure option refused when a task starts."""
    from ray.remote_function import RemoteFunction

    assert ray_private.tested("check")

    def api_server_changed(*args, **kwargs):
        raise RuntimeError("start_api_server changed its contract")

    monkeypatch.setattr(session, "_no_api_server", api_server_changed)
    real_remote = RemoteFunction._remote
    refused: list[bool] = []

    def refusing(self, args=None, kwargs=None, **options):
        if options.get(PRIVATE_OPTION) is not None:
            refused.append(True)
            raise ValueError(f"Invalid option keyword {PRIVATE_OPTION}")
        return real_remote(self, args, kwargs, **options)

    monkeypatch.setattr(RemoteFunction, "_remote", refusing)
    caplog.set_level(logging.WARNING, logger=ray_private.__name__)
    frames = _run_small_job(tmp_path, scene, ffmpeg, caffe_weights)
    assert sorted(frames["frame"]) == list(range(24))
    assert refused == [True]  # the first task fell back; the others went straight to the public path
    warned = _warnings(caplog)
    assert len(warned) == 2
    assert any("start-up patches" in w and "start_api_server changed its contract" in w for w in warned)
    assert any(PRIVATE_OPTION in w and "Invalid option keyword" in w for w in warned)
    assert none_left(), "the failed start or the session left Ray processes running"


def _count(n: int):
    for i in range(n):  # Ray drives the generator with send(): a plain loop, not ``yield from range``
        yield i


def test_a_refused_backpressure_option_streams_without_it(
    monkeypatch: pytest.MonkeyPatch, fresh_warnings, caplog: pytest.LogCaptureFixture
) -> None:
    from ray.remote_function import RemoteFunction

    real = RemoteFunction.options

    def refusing(self, **options):
        if PRIVATE_OPTION in options:
            raise ValueError(f"Invalid option keyword {PRIVATE_OPTION} for remote functions")
        return real(self, **options)

    monkeypatch.setattr(RemoteFunction, "options", refusing)
    caplog.set_level(logging.WARNING, logger=ray_private.__name__)
    with ray_session(RayConfig(num_cpus=1, object_store_mb=100)) as ray:
        task = ray_private.StreamingTask(ray, _count, backpressure=2, num_cpus=0.5, max_retries=0)
        assert not task.backpressured
        assert [ray.get(ref) for ref in task.remote(5)] == [0, 1, 2, 3, 4]
    assert len(_warnings(caplog)) == 1
    assert none_left()
