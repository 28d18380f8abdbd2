"""Which code a submitted job carries: the distribution's own top-level packages, never a list.

The set comes from the installed ``maskjobs`` distribution's ``top_level.txt`` (setuptools
writes it from ``[tool.setuptools.packages.find]`` in ``pyproject.toml``, for wheels and
editable installs alike); a source tree that was never installed reads the same table from
its ``pyproject.toml``. A package added to the project is therefore shipped without anyone
editing this module, and one that is not part of the distribution cannot be imported by the
job's code either (``tests/jobs/cluster/test_shipping.py`` imports the entrypoint from the
shipped folders alone).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

DISTRIBUTION = "maskjobs"


def code_packages() -> tuple[str, ...]:
    """The distribution's top-level import names, sorted (``configs``, ``detector``, ``jobs``, ``sinks``)."""
    try:
        text = importlib.metadata.distribution(DISTRIBUTION).read_text("top_level.txt")
    except importlib.metadata.PackageNotFoundError:
        text = None
    if text:
        names = {line.strip() for line in text.splitlines() if line.strip()}
    else:
        names = _from_pyproject(Path(__file__).resolve().parents[2] / "pyproject.toml")
    return tuple(sorted(names))


def code_dirs() -> list[str]:
    """The folders of :func:`code_packages`, for a Ray ``runtime_env``'s ``py_modules``.

    A name the metadata lists but that does not import (an install older than the code it
    points at) is left out with a warning: the job cannot import it either way."""
    dirs = []
    for name in code_packages():
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            logger.warning("not shipping %s: it does not import here (%s); reinstall maskjobs", name, exc)
            continue
        dirs.append(str(Path(module.__file__).parent))
    return dirs


def _from_pyproject(path: Path) -> set[str]:
    import tomllib  # Python 3.11+; only a source tree that was never installed reads pyproject.toml

    table = tomllib.loads(path.read_text())["tool"]["setuptools"]["packages"]["find"]
    return {pattern.split(".", 1)[0] for pattern in table["include"]}
