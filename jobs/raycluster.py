"""Connecting to Ray: an embedded local instance by default, or an existing cluster."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from jobs.config import RayConfig
from jobs.errors import InputError

logger = logging.getLogger(__name__)


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[Any]:
    """Yields the ``ray`` module, connected; an embedded instance stops with the block.

    Embedded: no dashboard, quiet logs, this machine's CPUs, a bounded object store, and a
    watchdog (:mod:`jobs.watchdog`) so a killed command leaves no Ray process running.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    from jobs.watchdog import start_watchdog

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
            raise InputError(f"cannot connect to Ray at {cfg.address}: {str(exc).splitlines()[0]}") from None
        yield ray
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if watchdog is not None:
            watchdog.terminate()
            watchdog.wait()



@contextmanager
def _without_http_api_and_autoscaler() -> Iterator[None]:
    """An embedded Ray started without two processes a one-machine batch job never uses.

    - The HTTP API server (``dashboard.py``): ``include_dashboard=False`` still starts it
      for the Jobs and state APIs, and ``ray.init`` waits ~1 s for it to come up. Without
      it nothing listens on an HTTP port at all.
    - The autoscaler monitor: a fixed local node has nothing to scale, and at shutdown it
      outlives the GCS and holds ``ray.shutdown`` for its 1 s SIGTERM grace period.

    Together: ``ray.init`` ~3.6 -> ~1.8 s and ``ray.shutdown`` ~1.4 -> ~0.3 s on 2 cores.
    Both are Ray internals (2.60), patched only around this ``ray.init`` call and only
    where they exist; with another Ray the block starts everything as before.
    """
    try:
        import ray._private.node as ray_node
        import ray._private.services as ray_services

        saved = ray_services.start_api_server, ray_node.Node.start_monitor
    except (ImportError, AttributeError):
        logger.debug("this Ray has no start_api_server/start_monitor: starting its full set of processes")
        yield
        return
    ray_services.start_api_server = lambda *args, **kwargs: (None, None)
    ray_node.Node.start_monitor = lambda self: None
    try:
        yield
    finally:
        ray_services.start_api_server, ray_node.Node.start_monitor = saved
