"""What ``submit`` ships is the distribution's package set, and that set is complete."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cluster.shipping import _from_pyproject, code_dirs, code_packages

ROOT = Path(__file__).resolve().parents[3]

# Imports every module of the shipped packages with the project's own install hidden: only the
# copied folders (sys.path[0]) and third-party packages can be found, as on a cluster whose
# nodes have maskjobs' dependencies and not maskjobs.
_IMPORT_ALL = r"""
import importlib, pkgutil, sys
sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
shipped = sys.argv[1].split(",")
for name in shipped:
    pkg = importlib.import_module(name)
    assert pkg.__file__.startswith(sys.path[0]), (name, pkg.__file__)
    for info in pkgutil.walk_packages(pkg.__path__, name + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
from jobs.cli.main import app
mine = {m.__name__.split(".")[0] for m in list(sys.modules.values())
        if getattr(m, "__file__", None) and m.__file__.startswith(sys.path[0])}
print(",".join(sorted(mine)))
"""


def test_shipped_packages_are_the_distributions_top_level_names() -> None:
    assert code_packages() == ("configs", "detector", "jobs", "sinks")
    assert set(code_packages()) == _from_pyproject(ROOT / "pyproject.toml")
    assert [Path(d).name for d in code_dirs()] == list(code_packages())


@pytest.mark.slow  # spawns a Python process
def test_the_entrypoint_imports_from_the_shipped_folders_alone(tmp_path: Path) -> None:
    for folder in code_dirs():
        shutil.copytree(folder, tmp_path / Path(folder).name, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); exec(sys.argv.pop(1))",
         str(tmp_path), _IMPORT_ALL, ",".join(code_packages())],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [",".join(code_packages())]


@pytest.mark.slow  # spawns a Python process
def test_a_package_outside_the_distribution_is_not_importable_there(tmp_path: Path) -> None:
    """The check above can fail: with ``sinks`` left out, importing the pipeline breaks."""
    for folder in code_dirs():
        if Path(folder).name != "sinks":
            shutil.copytree(folder, tmp_path / Path(folder).name, ignore=shutil.ignore_patterns("__pycache__"))
    shipped = ",".join(p for p in code_packages() if p != "sinks")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); exec(sys.argv.pop(1))",
         str(tmp_path), _IMPORT_ALL, shipped],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode != 0 and "No module named 'sinks'" in proc.stderr


def test_a_listed_name_that_does_not_import_is_left_out_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An install older than its code (metadata still naming a removed package) ships what imports."""
    import jobs.cluster.shipping as shipping

    monkeypatch.setattr(shipping, "code_packages", lambda: ("jobs", "no_such_package_here"))
    with caplog.at_level("WARNING", logger="jobs.cluster.shipping"):
        assert [Path(d).name for d in shipping.code_dirs()] == ["jobs"]
    assert "not shipping no_such_package_here" in caplog.text


def test_importing_the_cli_loads_no_heavy_module() -> None:
    """`maskjobs --help` (and every command's start) imports neither torch, Ray, pyarrow, OpenCV,
    decord, numpy nor yaml: the commands import what they need when they run."""
    code = (
        "import sys, jobs.cli.main\n"
        "heavy = [m for m in ('torch', 'ray', 'pyarrow', 'cv2', 'decord', 'numpy', 'yaml') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
