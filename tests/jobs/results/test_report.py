"""``maskjobs report`` opened in a real headless Chromium, and ``maskjobs summary``.

The screenshot is kept as a test artifact: ``tests/artifacts/report.png`` (gitignored).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from jobs.cli.main import app
from tests.jobs.conftest import WalkSet

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,2000",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium on PATH (CI installs Debian's chromium; `apt-get install -y chromium` here)")


@pytest.fixture(scope="module")
def report(walk_set: WalkSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "compliance report.html"  # a space: the file URL must be quoted
    result = CliRunner().invoke(app, ["report", str(walk_set.out), "-o", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(path)
    return path


def _browse(chromium: str, page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.slow  # reads the walkers job's output (a real `maskjobs run`)
def test_report_is_self_contained(report: Path, walk_set: WalkSet) -> None:
    text = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing fetched from a network
    assert "@import" not in text and "url(" not in text
    assert text.count("data:image/jpeg;base64,") == 1  # one unmasked person


@pytest.mark.slow  # the walkers job's output, in a headless Chromium
def test_report_renders_in_chromium(chromium: str, report: Path, walk_set: WalkSet, tmp_path: Path) -> None:
    dom = _browse(chromium, report, tmp_path, "--dump-dom").stdout
    # the inline script ran: the table is sorted by compliance, worst first
    assert 'data-sorted="compliance ascending"' in dom
    order = re.findall(r'<tr data-video="([^"]+)"', dom)
    assert order == ["b_walk.mp4", "a_masked.mp4"]  # 50% before 100% (the page lists them by name)
    assert re.findall(r'<tr data-video="([^"]+)"', report.read_text()) == ["a_masked.mp4", "b_walk.mp4"]
    # a chart per video, each with its compliance line
    charts = re.findall(r'<svg class="chart".*?</svg>', dom, flags=re.S)
    assert len(charts) == 2 and all("<polyline" in c for c in charts)
    # the unmasked person's thumbnail, with the track that tracks.parquet names
    tracks = pd.read_parquet(walk_set.out / "tracks.parquet")
    unmasked = tracks[tracks.label == "NoMask"]
    people = re.findall(r'<figure class="person" data-video="([^"]+)" data-track="(\d+)">\s*<img[^>]+src="data:image/jpeg', dom)
    assert people == [(v, str(t)) for v, t in zip(unmasked.video, unmasked.track)]
    assert 'id="totals"' in dom and ">3<" in dom  # three people in all

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    _browse(chromium, report, tmp_path, f"--screenshot={shot}")
    print(f"report screenshot: {shot}")
    image = cv2.imread(str(shot))
    assert image is not None and image.shape == (2000, 1280, 3)
    line = np.all(np.abs(image.astype(int) - (50, 125, 46)) < 30, axis=2)  # the charts' green (BGR)
    assert line.sum() > 300
    # the thumbnail is on screen, pixel for pixel
    thumb = cv2.imdecode(np.frombuffer(unmasked.thumbnail.iloc[0], np.uint8), cv2.IMREAD_COLOR)
    assert thumb.shape[0] == 128 and thumb.shape[1] <= 138  # shown at its own size
    assert cv2.matchTemplate(image, thumb, cv2.TM_CCOEFF_NORMED).max() > 0.95


@pytest.mark.slow  # reads the walkers job's output (a real `maskjobs run`)
def test_summary_prints_the_report_totals(walk_set: WalkSet) -> None:
    result = CliRunner().invoke(app, ["summary", str(walk_set.out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = {re.sub(r"\s+", " ", ln.strip("│ ")): ln for ln in result.stdout.splitlines()}
    frames = pd.read_parquet(walk_set.out / "frames")
    masked, faces = int(frames.masked.sum()), int(frames.faces.sum())
    assert f"faces │ {faces}" in " ".join(lines)
    assert f"face compliance │ {masked / faces:.1%}" in " ".join(lines)
    assert "people │ 3" in " ".join(lines) and "unmasked people │ 1" in " ".join(lines)


def test_report_of_a_directory_without_a_job_is_one_line_exit_2(tmp_path: Path) -> None:
    for command in ("report", "summary"):
        result = CliRunner().invoke(app, [command, str(tmp_path)])
        assert result.exit_code == 2
        assert "not a maskjobs output" in result.stderr and result.stderr.count("\n") == 1
