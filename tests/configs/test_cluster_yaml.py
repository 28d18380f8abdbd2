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
