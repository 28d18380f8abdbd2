"""Packing ``maskjobs run`` as a Ray job: entrypoint, runtime environment, checks made at submit.

The job's entrypoint is ``maskjobs run`` itself, given the config resolved here (written
as a complete YAML file into the job's ``working_dir``) so the cluster runs exactly what
the user asked for, whatever defaults it has. What travels with the job:

* ``working_dir``: ``maskjobs-job.yaml`` and (unless ``ship_weights`` is off) the weight
  file with its companion files (a Caffe ``.prototxt``, a ``.json`` sidecar, Paddle's pair);
* ``py_modules`` (unless ``ship_code`` is off): every top-level package of the distribution
  (:func:`jobs.cluster.shipping.code_packages`), so a cluster with only the dependencies
  installed runs this code.
  The entrypoint is then ``python -m jobs run`` (``python`` from the head's PATH, or the
  interpreter given); with ``ship_code`` off it is ``maskjobs run`` from the cluster's install.

Inputs and the output are URIs every node reads (``s3://...``, ``gs://...``, ``https://...``;
inputs are staged per node, :mod:`jobs.stage`) or paths on storage every node mounts at the
same path. Relative paths are made absolute here; an input missing on this machine is an
error before anything is submitted (``check_inputs=False`` skips that when only the cluster
can see it). A URI with credentials in it is refused: the cluster's own environment has them.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from detector.errors import is_utf8, printable_name
from jobs.cluster.shipping import code_dirs
from jobs.config import JobConfig
from jobs.errors import InputError
from sinks.location import display_location, is_uri

logger = logging.getLogger(__name__)

CONFIG_NAME = "maskjobs-job.yaml"
WEIGHTS_DIR = "weights"
_COMPANION_SUFFIXES = (".prototxt", ".caffemodel", ".json", ".hdf5", ".h5")
_PADDLE_FILES = ("__model__", "__params__")


@dataclass(frozen=True)
class Submission:
    """What goes to ``JobSubmissionClient.submit_job``."""

    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]


def _no_credentials(location: str) -> str:
    """``location`` unchanged; a URI with ``user:secret@`` in it is refused: the entrypoint (which
    Ray shows to anyone who can list jobs) would carry it. The cluster's nodes read credentials
    from their own environment."""
    if is_uri(location) and "@" in location.split("://", 1)[1].split("/", 1)[0]:
        raise InputError(
            f"{display_location(location)}: credentials in a URI would travel in the job's entrypoint; "
            "give the cluster's nodes credentials in their environment (AWS_* variables, an instance role) instead"
        )
    return location


def cluster_inputs(inputs: list[str], *, check: bool = True) -> list[str]:
    """Inputs as URIs (object storage, HTTP) or absolute paths the cluster's nodes resolve the same
    way; missing ones are errors (a URI is listed here with this machine's credentials)."""
    from jobs.remote import is_remote, list_videos

    out = []
    for given in inputs:
        if is_remote(given):
            _no_credentials(given)
            if check:
                try:
                    list_videos(given)
                except InputError as exc:
                    raise InputError(f"{exc} (use --no-check-inputs if only the cluster can read it)") from None
            out.append(given)
            continue
        path = Path(given).expanduser().absolute()
        if not is_utf8(str(path)):  # Ray's job supervisor failed it on the head (UnicodeEncodeError)
            raise InputError(
                f"{printable_name(str(path))}: a path that is not UTF-8 cannot travel in a Ray job's entrypoint; "
                "submit the folder that holds it: the job finds it there by its real name"
            )
        if check and not path.exists():
            raise InputError(
                f"{given}: not found on this machine; inputs must be on storage the cluster's nodes mount at the "
                "same path (use --no-check-inputs if only the cluster sees it)"
            )
        out.append(str(path))
    return out


def cluster_output(out: str) -> str:
    """A URI as given; a local path made absolute (it must be a mount every node shares)."""
    return _no_credentials(out) if is_uri(out) else str(Path(out).expanduser().absolute())


def weight_files(path: Path) -> list[Path]:
    """The weight file and the companions its importer reads beside it."""
    files = [path]
    for suffix in _COMPANION_SUFFIXES:
        sibling = path.with_suffix(suffix)
        if sibling != path and sibling.is_file():
            files.append(sibling)
    if path.name in _PADDLE_FILES:
        files += [path.with_name(n) for n in _PADDLE_FILES if n != path.name and path.with_name(n).is_file()]
    return files


def _weights_for_cluster(flag: str | None, *, ship: bool) -> Path:
    """The weight file to ship (loaded here first: a bad one fails now), or the head's path."""
    if not ship:
        if not flag or not Path(flag).is_absolute():
            raise InputError("--no-ship-weights needs --weights with an absolute path that the head sees")
        return Path(flag)
    from detector.weights import load_weights
    from jobs.weight_cache import resolve_weights

    path = resolve_weights(flag).expanduser().absolute()
    load_weights(path)
    return path


def _ship_side_files(config: JobConfig, stage: Path) -> dict[str, Any]:
    """Copies the zones file and the start-times mapping the config names into ``stage`` (the
    job's working_dir); returns the config sections that name the copies. A missing file is an
    :class:`InputError` here, before anything is submitted."""
    sections: dict[str, Any] = {}
    for section, key, name in (("zones", "file", "maskjobs-zones"), ("metadata", "start_times", "maskjobs-start-times")):
        given = getattr(getattr(config, section), key)
        if not given:
            continue
        path = Path(given).expanduser()
        if not path.is_file():
            raise InputError(f"{given}: no such file ({section}.{key})")
        shutil.copy2(path, stage / f"{name}{path.suffix}")
        sections[section] = dataclasses.replace(getattr(config, section), **{key: f"{name}{path.suffix}"})
    return sections


@contextmanager
def staged_submission(
    inputs: list[str],
    out: str,
    config: JobConfig,
    *,
    overwrite: bool,
    ship_code: bool = True,
    ship_weights: bool = True,
    check_inputs: bool = True,
    python: str | None = None,
) -> Iterator[Submission]:
    """Yields the submission; its ``working_dir`` exists until the block ends (submit inside it).

    With ``ship_weights``, the weight file (``config.detector.weights``, else the usual
    resolution on this machine) is loaded here, so a bad file fails before submitting,
    and shipped; without it, ``config.detector.weights`` must name a path the head sees.
    ``python`` is the head's interpreter for the entrypoint (default: ``python`` on its PATH;
    given, it also runs an installed maskjobs with ``ship_code`` off).
    """
    paths = cluster_inputs(inputs, check=check_inputs)
    out = cluster_output(out)
    stage = Path(tempfile.mkdtemp(prefix="maskjobs-submit-"))
    try:
        weights = _weights_for_cluster(config.detector.weights, ship=ship_weights)
        if ship_weights:
            (stage / WEIGHTS_DIR).mkdir()
            for f in weight_files(weights):
                shutil.copy2(f, stage / WEIGHTS_DIR / f.name)
            shipped = f"{WEIGHTS_DIR}/{weights.name}"
        else:
            shipped = str(weights)
        cfg = dataclasses.replace(
            config,
            detector=dataclasses.replace(config.detector, weights=shipped),
            ray=dataclasses.replace(config.ray, address="auto"),
            **_ship_side_files(config, stage),
        )
        (stage / CONFIG_NAME).write_text(
            "# Resolved by `maskjobs submit`: the complete config of this job.\n"
            + yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        )
        command = [python or "python", "-m", "jobs"] if ship_code or python else ["maskjobs"]
        args = [*command, "run", *paths, "--out", out, "--config", CONFIG_NAME]
        if overwrite:
            args.append("--overwrite")
        runtime_env: dict[str, Any] = {
            "working_dir": str(stage),
            "env_vars": {"PYTHONUNBUFFERED": "1"},
            "excludes": ["__pycache__", "*.pyc"],
        }
        if ship_code:
            runtime_env["py_modules"] = code_dirs()
        metadata = {"maskjobs": "run", "out": display_location(out), "inputs": str(len(paths))}
        yield Submission(shlex.join(args), runtime_env, metadata)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
