"""Connecting to Ray: an embedded local instance by default, or an existing cluster."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from jobs.config import RayConfig
from jobs.errors import InputError, one_line

logger = logging.getLogger(__name__)


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[Any]:
    """Yields the ``ray`` module, connected; an embedded instance stops with the block.

    Embedded: no dashboard, HTTP API or autoscaler (:func:`_without_http_api_and_autoscaler`),
    quiet logs, this machine's CPUs, a bounded object store, and a watchdog
    (:mod:`jobs.pipeline.watchdog`) so a killed command leaves no Ray process running.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    from jobs.pipeline.watchdog import start_watchdog

    watchdog = None
    try:
        try:
            if cfg.address:
                ray.init(address=cfg.address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                watchdog = start_watchdog()
                with _without_http_api_and_autoscaler():
                    ray.init(
                        address="local",
                        num_cpus=cfg.num_cpus or os.cpu_count() or 1,
                        num_gpus=cfg.num_gpus,
                        include_dashboard=False,
                        object_store_memory=cfg.object_store_mb * 1024 * 1024,
                        logging_level=logging.ERROR,
                        log_to_driver=False,
                    )
        except ConnectionError as exc:
            raise InputError(f"cannot connect to Ray at {cfg.address}: {one_line(exc)}") from None
        yield ray
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if watchdog is not None:
            watchdog.terminate()
            watchdog.wait()


@contextmanager
def _without_http_api_and_autoscaler() -> Iterator[None]:
    """An embedded Ray started without two processes a one-machine batch job never uses,
    and without sleeping through its raylet's registration.

    - The HTTP API server (``dashboard.py``): ``include_dashboard=False`` still starts it
      for the Jobs and state APIs, and ``ray.init`` waits ~1 s for it to come up. Without
      it nothing serves HTTP at all.
    - The autoscaler monitor: a fixed local node has nothing to scale, and at shutdown it
      outlives the GCS and holds ``ray.shutdown`` for its 1 s SIGTERM grace period.
    - ``ray.init`` then asks the GCS for the new node, a call that waits in whole seconds
      while the raylet registers (~0.5-1.7 s on 2 busy cores): it is asked only once the
      node is listed, polled every 50 ms.

    Together: ``ray.init`` ~3.6 -> ~1.6-2.5 s and ``ray.shutdown`` ~1.4 -> ~0.3 s on 2 cores.
    These are Ray internals (2.60), patched only around this ``ray.init`` call and only
    where they exist; with another Ray the block starts Ray as Ray does.
    """
    try:
        import ray._private.node as ray_node
        import ray._private.services as ray_services
        from ray._raylet import GcsClient, NodeID

        saved = ray_services.start_api_server, ray_node.Node.start_monitor, ray_services.get_node
    except (ImportError, AttributeError):
        logger.debug("this Ray lacks the internals _without_http_api_and_autoscaler expects; starting it as is")
        yield
        return
    get_node = saved[2]

    def get_node_once_listed(gcs_address: str, node_id: str) -> Any:
        deadline = time.monotonic() + 30  # ray.init's own limit for the raylet to start
        try:
            client, wanted = GcsClient(address=gcs_address), NodeID.from_hex(node_id)
            while wanted not in client.get_all_node_info(timeout=5) and time.monotonic() < deadline:
                time.sleep(0.05)
        except Exception as exc:  # any trouble polling: Ray's own call decides
            logger.debug("polling the GCS for the node failed (%s)", exc)
        return get_node(gcs_address, node_id)

    ray_services.start_api_server = lambda *args, **kwargs: (None, None)
    ray_node.Node.start_monitor = lambda self: None
    ray_services.get_node = get_node_once_listed
    try:
        yield
    finally:
        ray_services.start_api_server, ray_node.Node.start_monitor, ray_services.get_node = saved
