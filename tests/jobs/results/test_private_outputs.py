"""Issue 17 item 16: a job's outputs hold faces (thumbnails, the report, annotated videos), so
everything maskjobs writes under ``--out`` is the owner's only: files 0600, folders 0700."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobs.cli.main import app
from tests.jobs.conftest import WalkSet

pytestmark = pytest.mark.slow  # uses the walk_set job (`maskjobs run --annotate` on real videos)


def _open_to_others(root: Path) -> list[str]:
    return [f"{p.relative_to(root.parent)} {p.stat().st_mode & 0o777:o}"
            for p in [root, *root.rglob("*")] if p.stat().st_mode & 0o077]


def test_a_jobs_outputs_are_owner_only(walk_set: WalkSet, tmp_path: Path) -> None:
    out = walk_set.out
    assert (out / "annotated" / "b_walk.mp4.mp4").is_file() and (out / "tracks.parquet").is_file()
    old = os.umask(0o022)
    try:
        result = CliRunner().invoke(app, ["report", str(out), "--output", str(tmp_path / "r" / "report.html")],
                                    catch_exceptions=False)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert _open_to_others(out) == []
    assert _open_to_others(tmp_path / "r") == []
