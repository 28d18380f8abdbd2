"""Connecting to Ray: an embedded local instance by default, or an existing cluster."""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from detector.errors import printable_name
from jobs.config import RayConfig
from jobs.errors import InputError, one_line
from jobs.pipeline import ray_private
from jobs.pipeline.sizing import local_cpus
from jobs.pipeline.watchdog import MARK, descendants, start_watchdog, stat

logger = logging.getLogger(__name__)


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[Any]:
    """Yields the ``ray`` module, connected; an embedded instance stops with the block.

    Embedded: no dashboard, HTTP API or autoscaler (:func:`_without_http_api_and_autoscaler`
    on a Ray it was tested on), quiet logs, the CPUs this process may use
    (:func:`~jobs.pipeline.sizing.local_cpus`), a bounded object store, Ray settings for a
    short one-machine job (:func:`embedded_settings`), and a watchdog
    (:mod:`jobs.pipeline.watchdog`) so a killed command leaves no Ray process running.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    watchdog = None
    saved = {name: os.environ.get(name) for name in (MARK, *embedded_settings(1))}  # restored after
    try:
        try:
            if cfg.address:
                with _encodable_entrypoint():
                    ray.init(address=cfg.address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                token = f"{os.getpid()}-{(stat(os.getpid()) or (0, 0))[1]}-{time.monotonic_ns()}"
                watchdog = start_watchdog(token)
                os.environ[MARK] = token  # inherited by the raylet, its agents and workers
                cpus = cfg.num_cpus or local_cpus()  # affinity and container quota, not os.cpu_count()
                for name, value in embedded_settings(cpus).items():  # read by the processes Ray starts
                    os.environ.setdefault(name, value)
                _start_embedded(
                    ray,
                    address="local",
                    _node_ip_address=LOOPBACK,
                    num_cpus=cpus,
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
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


LOOPBACK = "127.0.0.1"


def embedded_settings(cpus: float) -> dict[str, str]:
    """Ray config values (read from ``RAY_<name>`` environment variables by the processes Ray
    starts) for an embedded Ray of ``cpus`` CPUs, set only where the user has not set them:

    - Local socket connections (the raylet to its object store, a worker to its raylet) retry
      every 50 ms, 200 times, not every second 10 times: the raylet connects to its object
      store as the store's thread starts, and where its socket is not listening yet (about a
      third of starts on 2 cores) the raylet slept a whole second before registering
      (``ray.init`` ~2.2 s instead of ~1.25 s). The same 10 s of patience.
    - Up to ``cpus`` idle workers are kept (``num_workers_soft_limit``; Ray's default is the
      CPUs not reserved, which the detector actors hold): otherwise the raylet kills the decode
      task's worker a second after each shard, and every shard starts a new Python process
      that imports the decoders again, ~1 s of CPU on 2 busy cores while the detectors wait
      (every frame of 7.5 min of 720p: 7 shards, run phase 38.9 -> 36.7 s).
    """
    return {
        "RAY_raylet_client_connect_timeout_milliseconds": "50",
        "RAY_raylet_client_num_connect_attempts": "200",
        "RAY_num_workers_soft_limit": str(max(1, math.ceil(cpus))),
    }


START_UP_PATCHES = "the embedded Ray's start-up patches (no HTTP API, no autoscaler, node polled)"


def _start_embedded(ray: Any, **init: Any) -> None:
    """``ray.init(**init)`` with :func:`_without_http_api_and_autoscaler` on a tested Ray
    (:mod:`jobs.pipeline.ray_private`). Any exception while the patches are applied or Ray
    starts under them stops what that start left running and starts Ray as Ray does: a
    patch that no longer fits costs the seconds it saved, never the job. Either way Ray
    starts on loopback only (:func:`_on_loopback`)."""
    if ray_private.tested(START_UP_PATCHES) and not ray.is_initialized():
        before = descendants(os.getpid())
        try:
            with _without_http_api_and_autoscaler(), _on_loopback(), _encodable_entrypoint():
                ray.init(**init)
            _check_loopback(ray)
            return
        except Exception as exc:  # any trouble, not only a missing name: Ray's own start
            ray_private.fall_back(START_UP_PATCHES, exc)
            _stop_failed_start(ray, before)
    with _on_loopback(), _encodable_entrypoint():
        ray.init(**init)
    _check_loopback(ray)


@contextmanager
def _encodable_entrypoint() -> Iterator[None]:
    """Lets ``ray.init`` start from a command line that is not UTF-8 (a file name given as
    an argument, e.g. ``caf\\xe9.mp4`` from a Latin-1 NAS).

    ``ray.init`` sends its process's command line to the GCS as the job's entrypoint, a
    string it encodes as UTF-8: a name's undecodable bytes (Python's surrogates) raised
    ``UnicodeEncodeError`` there, and the job never started (the fallback start then waited
    60 s for a GCS that was gone). Around ``ray.init`` that string (Ray 2.60's
    ``ray._private.utils.get_entrypoint_name``) is escaped (:func:`printable_name`: ``\\xff``). Not
    pinned to tested Rays (:mod:`jobs.pipeline.ray_private`): it only rewrites a label that
    would otherwise fail, Ray's own value is kept on any error, and a Ray without that name
    starts as it does.
    """
    try:
        import ray._private.utils as ray_utils

        original = ray_utils.get_entrypoint_name
    except (ImportError, AttributeError):
        yield
        return

    def encodable() -> str:
        name = original()
        try:
            return printable_name(name)
        except Exception:  # any trouble: Ray's own value
            return name

    ray_utils.get_entrypoint_name = encodable
    try:
        yield
    finally:
        ray_utils.get_entrypoint_name = original


@contextmanager
def _on_loopback() -> Iterator[None]:
    """Lets ``ray.init(_node_ip_address="127.0.0.1")`` keep that address.

    Ray's GCS, raylet, workers and agents listen on every interface unless their node's
    address is exactly 127.0.0.1, and ``ray.init`` replaces a loopback ``_node_ip_address``
    by the machine's outward address unless Ray's cluster mode is off (it is on by default
    on Linux: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``). An embedded Ray is one node on this
    machine, so cluster mode is turned off around its ``ray.init`` (Ray 2.60's
    ``ray_constants.ENABLE_RAY_CLUSTER``); a Ray without that switch starts as it would,
    and :func:`_check_loopback` warns."""
    try:
        import ray._private.ray_constants as ray_constants
    except ImportError:
        yield
        return
    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        yield
        return
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _check_loopback(ray: Any) -> None:
    """Warns when the embedded Ray's node is not on loopback (its ports then face the network)."""
    try:
        address = ray.util.get_node_ip_address()
    except Exception as exc:  # any trouble asking: say so, the job goes on
        logger.warning("could not tell which address the embedded Ray listens on (%s)", one_line(exc))
        return
    if address != LOOPBACK:
        logger.warning("the embedded Ray listens on %s, not only on %s: its ports are reachable from the network",
                       address, LOOPBACK)


def _stop_failed_start(ray: Any, before: dict[int, int]) -> None:
    """Shuts down what a failed ``ray.init`` left: its driver state, and the processes it
    started (those of this process's descendants not in ``before``, ``{pid: start time}``),
    which a ``ray.init`` that fails half-way does not stop itself."""
    try:
        if ray.is_initialized():
            ray.shutdown()
    except Exception as exc:  # the processes are killed below all the same
        logger.debug("ray.shutdown after a failed start: %s", exc)
    for pid, start in descendants(os.getpid()).items():
        if before.get(pid) == start:
            continue
        st = stat(pid)
        if st is not None and st[1] == start:  # still the process seen (a reused pid is not killed)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _no_api_server(*args: Any, **kwargs: Any) -> tuple[None, None]:
    """Replaces ``ray._private.services.start_api_server``: no process, no URL."""
    return None, None


def _no_monitor(node: Any) -> None:
    """Replaces ``ray._private.node.Node.start_monitor``: no autoscaler monitor."""


def _minimal_agent() -> ImportError:
    """Replaces ``ray._private.utils.get_dashboard_dependency_error``: the answer of a Ray
    installed without the dashboard's dependencies, so the dashboard agent starts ``--minimal``."""
    return ImportError("the embedded Ray's dashboard agent runs minimal (maskjobs)")


def _no_log_monitor(node: Any) -> None:
    """Replaces ``ray._private.node.Node.start_log_monitor``: no log monitor (what
    ``ray start --no-include-log-monitor`` does; ``ray.init`` has no such option)."""


@contextmanager
def _without_http_api_and_autoscaler() -> Iterator[None]:
    """An embedded Ray started without three processes a one-machine batch job never uses,
    with a minimal dashboard agent, and without sleeping through its raylet's registration.

    - The HTTP API server (``dashboard.py``): ``include_dashboard=False`` still starts it
      for the Jobs and state APIs, and ``ray.init`` waits ~1 s for it to come up. Without
      it nothing serves HTTP at all.
    - The autoscaler monitor: a fixed local node has nothing to scale, and at shutdown it
      outlives the GCS and holds ``ray.shutdown`` for its 1 s SIGTERM grace period.
    - The log monitor: it tails the workers' log files to publish their lines to the driver,
      which ``log_to_driver=False`` makes nobody read; its start costs ~0.45 s of CPU while
      the GCS, raylet and agents start on the same 2 cores. The files are still written.
    - The dashboard agent's servers: it starts ``--minimal``, as on a Ray installed without
      the dashboard's dependencies (no gRPC or HTTP server, no metrics export: nothing reads
      them without a dashboard), and the driver no longer imports those dependencies (aiohttp,
      OpenTelemetry: ~0.38 s) to decide so before it starts the raylet.
    - ``ray.init`` then asks the GCS for the new node, a call that waits in whole seconds
      while the raylet registers (~0.5-1.7 s on 2 busy cores): it is asked only once the
      node is listed, polled every 50 ms.

    Together: ``ray.init`` ~3.6 -> ~1.6-2.5 s and ``ray.shutdown`` ~1.4 -> ~0.3 s on 2 cores.
    These are Ray internals (2.60), patched only around this ``ray.init`` call; a Ray that
    lacks them raises here, before anything is patched, and :func:`_start_embedded` starts
    Ray as Ray does.
    """
    import ray._private.node as ray_node
    import ray._private.services as ray_services
    import ray._private.utils as ray_utils
    from ray._raylet import GcsClient, NodeID

    node = ray_node.Node
    saved = (ray_services.start_api_server, node.start_monitor, node.start_log_monitor, ray_services.get_node,
             ray_utils.get_dashboard_dependency_error)
    get_node = saved[3]

    def get_node_once_listed(gcs_address: str, node_id: str) -> Any:
        deadline = time.monotonic() + 30  # ray.init's own limit for the raylet to start
        try:
            client, wanted = GcsClient(address=gcs_address), NodeID.from_hex(node_id)
            while wanted not in client.get_all_node_info(timeout=5) and time.monotonic() < deadline:
                time.sleep(0.05)
        except Exception as exc:  # any trouble polling: Ray's own call decides
            logger.debug("polling the GCS for the node failed (%s)", exc)
        return get_node(gcs_address, node_id)

    ray_services.start_api_server = _no_api_server
    node.start_monitor = _no_monitor
    node.start_log_monitor = _no_log_monitor
    ray_services.get_node = get_node_once_listed
    ray_utils.get_dashboard_dependency_error = _minimal_agent
    try:
        yield
    finally:
        (ray_services.start_api_server, node.start_monitor, node.start_log_monitor, ray_services.get_node,
         ray_utils.get_dashboard_dependency_error) = saved
