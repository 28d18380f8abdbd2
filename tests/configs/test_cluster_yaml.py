"""configs/cluster.yaml is a valid Ray cluster launcher config, private by default."""

from __future__ import annotations

from importlib import resources

import yaml


def test_cluster_yaml_passes_rays_schema_and_keeps_the_dashboard_private() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(resources.files("configs").joinpath("cluster.yaml").read_text())
    validate_config(prepare_config(raw))  # raises on an invalid config
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"] == {"CPU": 0}
    assert {"cpu-decode", "gpu"} <= set(types)
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(raw["worker_start_ray_commands"])


def test_cluster_yaml_installs_exactly_the_projects_dependencies() -> None:
    """The nodes' pip install is pyproject.toml's dependency list, specifiers and all, so the
    two cannot drift (decord2, not the unmaintained decord; imageio-ffmpeg for --annotate)."""
    import shlex
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    wanted = {str(Requirement(d)) for d in pyproject["project"]["dependencies"]}
    raw = yaml.safe_load(resources.files("configs").joinpath("cluster.yaml").read_text())
    installs = [shlex.split(c) for c in raw["setup_commands"] if shlex.split(c)[:2] == ["pip", "install"]]
    assert len(installs) == 1, raw["setup_commands"]
    installed = {str(Requirement(a)) for a in installs[0][2:] if not a.startswith("-")}
    assert installed == wanted
    names = {Requirement(a).name for a in installed}
    assert "decord2" in names and "decord" not in names and "imageio-ffmpeg" in names
