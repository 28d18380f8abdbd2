"""The embedded Ray: what it starts, and that it leaves nothing behind."""

from __future__ import annotations

import os
import time

from jobs.config import RayConfig
from jobs.pipeline.session import ray_session
from jobs.pipeline.watchdog import descendants


def _cmdlines() -> list[str]:
    """This test process's Ray descendants (other fixtures may run servers of their own)."""
    out = []
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                line = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ray" in line or "jobs.pipeline.watchdog" in line:
            out.append(line)
    return out


def test_embedded_ray_starts_no_http_api_or_autoscaler_and_stops_clean() -> None:
    import ray._private.services as ray_services

    original = ray_services.start_api_server
    with ray_session(RayConfig(num_cpus=1, object_store_mb=100)) as ray:
        assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
        running = _cmdlines()
        assert any("raylet" in c for c in running) and any("gcs_server" in c for c in running)
        assert not [c for c in running if "dashboard/dashboard.py" in c or "autoscaler/_private/monitor.py" in c]
        assert ray_services.start_api_server is original  # patched only around ray.init
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _cmdlines():
        time.sleep(0.2)
    assert _cmdlines() == []
