"""The embedded Ray: what it starts, and that it leaves nothing behind."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from jobs.config import RayConfig
from jobs.pipeline.session import ray_session
from tests.jobs.pipeline.rayprocs import none_left, ray_processes

pytestmark = pytest.mark.slow  # starts an embedded Ray


def test_embedded_ray_starts_no_http_api_autoscaler_or_log_monitor_and_stops_clean() -> None:
    import ray._private.node as ray_node
    import ray._private.services as ray_services
    import ray._private.utils as ray_utils

    def patched() -> tuple[object, ...]:
        return ray_services.start_api_server, ray_node.Node.start_log_monitor, ray_utils.get_dashboard_dependency_error

    original = patched()
    with ray_session(RayConfig(num_cpus=1, object_store_mb=100)) as ray:
        assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
        running = ray_processes()
        assert any("raylet" in c for c in running) and any("gcs_server" in c for c in running)
        unwanted = ("dashboard/dashboard.py", "autoscaler/_private/monitor.py", "_private/log_monitor.py")
        assert not [c for c in running if any(name in c for name in unwanted)]
        assert patched() == original  # patched only around ray.init
        assert _metrics_agent_port(ray) == "-1"  # the dashboard agent runs minimal: no gRPC server
    assert none_left(), ray_processes()


def _metrics_agent_port(ray: Any) -> str:
    """What the node's dashboard agent wrote as its metrics port (``-1``: none, a minimal agent)."""
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
    port_file = session_dir / f"metrics_agent_port_{ray.get_runtime_context().get_node_id()}"
    deadline = time.monotonic() + 20
    while not port_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return port_file.read_text().strip()


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


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = (item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def test_embedded_ray_gets_its_settings_unless_the_user_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """The raylet of an embedded Ray gets :func:`embedded_settings` (the object store's socket
    retried every 50 ms, not every second; as many idle workers kept as it has CPUs); a value
    the user set wins, and this process's environment is as it was afterwards."""
    import os

    from jobs.pipeline.session import embedded_settings
    from jobs.pipeline.watchdog import descendants
    from tests.jobs.pipeline.rayprocs import _cmdline

    attempts, delay = "RAY_raylet_client_num_connect_attempts", "RAY_raylet_client_connect_timeout_milliseconds"
    idle = "RAY_num_workers_soft_limit"
    monkeypatch.delenv(delay, raising=False)
    monkeypatch.delenv(idle, raising=False)
    monkeypatch.setenv(attempts, "77")  # the user's
    with ray_session(RayConfig(num_cpus=3, object_store_mb=100)) as ray:
        assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
        raylets = [pid for pid in descendants(os.getpid()) if "raylet/raylet" in (_cmdline(pid) or "")]
        assert raylets
        env = _environ(raylets[0])
    assert env[delay] == embedded_settings(3)[delay] == "50"
    assert env[idle] == embedded_settings(3)[idle] == "3"
    assert env[attempts] == "77"
    assert delay not in os.environ and idle not in os.environ and os.environ[attempts] == "77"


def test_a_decode_worker_outlives_its_shard() -> None:
    """With CPUs reserved by actors, Ray keeps no idle worker by default: each task after a
    pause started a new Python process. The embedded Ray keeps them (same pid)."""
    import time

    with ray_session(RayConfig(num_cpus=2, object_store_mb=100)) as ray:
        holder = ray.remote(num_cpus=1.5)(_Holder).remote()  # what detector actors hold: 0 whole CPUs left
        ray.get(holder.ready.remote())
        task = ray.remote(num_cpus=0.5)(_pid)
        first = ray.get(task.remote())
        time.sleep(2.5)  # past Ray's 1 s idle-worker time-out (killing runs every 200 ms)
        assert ray.get(task.remote()) == first


class _Holder:
    def ready(self) -> bool:
        return True


def _pid() -> int:
    import os

    return os.getpid()
