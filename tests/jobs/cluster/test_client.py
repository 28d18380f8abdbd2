"""The Jobs API layer without a cluster: tokens, and a finished job's outcome as an exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.cluster.client import describe, find_token, outcome_code


def _info(status: str, exit_code: int | None = None, message: str | None = None):
    from ray.job_submission import JobDetails, JobStatus, JobType

    return JobDetails(
        type=JobType.SUBMISSION, submission_id="raysubmit_x", entrypoint="python -m jobs run v --out o",
        status=JobStatus(status), driver_exit_code=exit_code, message=message,
    )


CRASH = (
    "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
    "Traceback (most recent call last):\n  File \"<frozen runpy>\", line 198, in _run_module_as_main\n"
    "ModuleNotFoundError: No module named 'decord'\n"
)
BAD_INPUT = (
    "Job entrypoint command failed with exit code 2, last available logs (truncated to 20,000 chars):\n"
    "error: /mnt/v: no such file or directory\n"
)


@pytest.mark.parametrize(
    "status,exit_code,message,code,reason",
    [
        ("SUCCEEDED", 0, "Job finished successfully.", 0, "raysubmit_x: SUCCEEDED"),
        ("FAILED", 1, "Job entrypoint command failed with exit code 1 ...\nerror: a.mp4: empty", 1,
         "some videos failed"),
        ("FAILED", 1, CRASH, 3, "ModuleNotFoundError: No module named 'decord'"),
        ("FAILED", 2, BAD_INPUT, 3, "exit code 2, /mnt/v: no such file or directory"),
        ("FAILED", 127, "Job entrypoint command failed with exit code 127 ...\n/bin/sh: 1: python: not found", 3,
         "exit code 127"),
        ("STOPPED", None, "Job was intentionally stopped.", 3, "STOPPED, Job was intentionally stopped."),
    ],
)
def test_outcome_and_description(status: str, exit_code: int | None, message: str, code: int, reason: str) -> None:
    info = _info(status, exit_code, message)
    assert outcome_code(info) == code
    assert reason in describe(info) and "\n" not in describe(info)


def test_token_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    assert find_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert find_token().value == "from-home"
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert find_token().value == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", " from-env ")
    assert find_token().value == "from-env" and find_token().source == "$RAY_AUTH_TOKEN"
