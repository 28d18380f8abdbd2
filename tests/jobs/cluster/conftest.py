"""A Python with maskjobs' dependencies and not maskjobs, for the cluster tests' Ray nodes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.rayhead import deps_only_python


@pytest.fixture(scope="session")
def deps_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session (seconds); checked to lack maskjobs and to have its dependencies."""
    python = deps_only_python(tmp_path_factory.mktemp("deps-only") / "venv")
    probe = subprocess.run(
        [str(python), "-c", "import torch, ray, decord, pyarrow, cv2\nimport jobs"],
        capture_output=True, text=True, cwd="/", timeout=120,
    )
    assert probe.returncode != 0 and "No module named 'jobs'" in probe.stderr, probe.stderr[-2000:]
    return python
