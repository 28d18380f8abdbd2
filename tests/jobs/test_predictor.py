from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = (
    "import os, sys\n"
    "{before}\n"
    "from jobs.predictor import _sleeping_openmp_threads\n"
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
