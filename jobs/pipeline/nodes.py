"""Running a small function once on every alive node of the cluster (the stage caches' cleanup)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from jobs.errors import one_line

logger = logging.getLogger(__name__)


def on_every_node(ray: Any, fn: Callable[[], Any], *, timeout_s: float = 60) -> dict[str, Any]:
    """``{node id: fn()}`` for every alive node, each run in a zero-CPU task pinned to its node;
    a node that fails or does not answer in ``timeout_s`` is logged and left out."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = {
        node["NodeID"]: remote.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote()
        for node in ray.nodes()
        if node.get("Alive")
    }
    out: dict[str, Any] = {}
    for node_id, ref in refs.items():
        try:
            out[node_id] = ray.get(ref, timeout=timeout_s)
        except Exception as exc:  # a Ray error: that node died or timed out; the others still count
            logger.warning("node %s: %s", node_id[:12], one_line(exc, limit=300))
            ray.cancel(ref, force=True)
    return out
