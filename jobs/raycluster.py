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
