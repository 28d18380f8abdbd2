"""Where a Ray worker runs, for job.json's ``placement``. Light to import: the decode tasks and
the detector actors answer with it without importing the driver's modules (an actor asked
through ``__ray_call__`` with a function of :mod:`jobs.pipeline.job` imported that module,
pandas and pyarrow's datasets included: ~0.6 s after the last batch, waited on by the driver)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Started:
    """A decode task's first item: it runs (the driver times a shard from then, not from when it
    was queued), and where: the Ray node's id and host name (job.json's ``placement``)."""

    node: str
    host: str


def where() -> Started:
    """Where this Ray worker runs (an empty node id outside Ray)."""
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    return Started(node=node, host=os.uname().nodename)
