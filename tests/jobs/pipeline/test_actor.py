from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each test spawns a Python process or starts Ray

_PROBE = (
    "import os, sys\n"
    "{before}\n"
    "from jobs.pipeline.actor import _sleeping_openmp_threads\n"
    "_sleeping_openmp_threads()\n"
    "print(os.environ.get('OMP_WAIT_POLICY', 'unset'))\n"
)


def _policy(*, before: str = "", env_policy: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(before=before)], env=env, capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


@pytest.mark.parametrize(
    ("before", "env_policy", "expected"),
    [
        ("", None, "PASSIVE"),  # a fresh worker: set before torch loads OpenMP
        ("", "ACTIVE", "ACTIVE"),  # the user's choice is kept
        ("import torch", None, "unset"),  # too late to take effect: left alone
    ],
)
def test_openmp_threads_sleep_in_cpu_actors(before: str, env_policy: str | None, expected: str) -> None:
    assert _policy(before=before, env_policy=env_policy) == expected


def test_a_cpu_detector_actor_runs_with_sleeping_openmp_threads(pth_weights: Path) -> None:
    """The real actor in a real local Ray: its worker process got the setting before torch."""
    from detector.weights import convert_weights
    from jobs.config import DetectorConfig, RayConfig
    from jobs.pipeline.actor import DetectorActor, WeightsPayload
    from jobs.pipeline.session import ray_session

    payload = WeightsPayload.from_converted(convert_weights(pth_weights))
    with ray_session(RayConfig(num_cpus=1, object_store_mb=100)) as ray:
        actor = ray.remote(DetectorActor).options(num_cpus=1).remote(payload, DetectorConfig(), threads=1, use_gpu=False)
        assert ray.get(actor.ping.remote()) == "cpu"
        policy = ray.get(actor.__ray_call__.remote(lambda self: os.environ.get("OMP_WAIT_POLICY", "unset")))
        assert policy == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")  # a value set here is kept
