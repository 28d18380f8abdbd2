"""The embedded Ray: what it starts, and that it leaves nothing behind."""

from __future__ import annotations


import pytest

from jobs.config import RayConfig
from jobs.pipeline.session import ray_session
from tests.jobs.pipeline.rayprocs import none_left, ray_processes

pytestmark = pytest.mark.slow  # starts an embedded Ray


def test_embedded_ray_starts_no_http_api_or_autoscaler_and_stops_clean() -> None:
    import ray._private.services as ray_services

    original = ray_services.start_api_server
    with ray_session(RayConfig(num_cpus=1, object_store_mb=100)) as ray:
        assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
        running = ray_processes()
        assert any("raylet" in c for c in running) and any("gcs_server" in c for c in running)
        assert not [c for c in running if "dashboard/dashboard.py" in c or "autoscaler/_private/monitor.py" in c]
        assert ray_services.start_api_server is original  # patched only around ray.init
    assert none_left(), ray_processes()


def _loopback(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def test_embedded_ray_listens_on_loopback_only() -> None:
    """Issue 17 item 15: every port of the embedded Ray (GCS, raylet, workers, agents) is bound to
    127.0.0.1 (or ::ffff:127.0.0.1), none to 0.0.0.0 / ::."""
    from tests.jobs.pipeline.rayprocs import listening_sockets

    with ray_session(RayConfig(num_cpus=1, object_store_mb=100)) as ray:
        assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42  # a worker is up and listening too
        sockets = listening_sockets()
        node_ip = ray.util.get_node_ip_address()
    commands = " ".join(c for c, _, _ in sockets)
    assert "gcs_server" in commands and "raylet" in commands, sockets
    exposed = [(c, a, p) for c, a, p in sockets if not _loopback(a)]
    assert not exposed, f"ports open to the network: {exposed}"
    assert node_ip == "127.0.0.1"
