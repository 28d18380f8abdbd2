"""How a job uses the cluster: detector actors, their threads, and decode tasks at once."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.config import JobConfig
from jobs.errors import ConfigError


@dataclass(frozen=True)
class Sizing:
    """How the job uses the cluster: detector actors, their threads, concurrent decoders."""

    detector_workers: int
    detector_threads: int | None  # torch threads per CPU actor; None on GPU
    decoders: int  # decode tasks running at once


def size_job(cluster: dict[str, float], config: JobConfig) -> Sizing:
    """Resolves the ``null`` (auto) resource settings against the cluster's resources
    (``ray.cluster_resources()``: ``{"CPU": n, "GPU": n, ...}``).

    On CPUs a frame costs about 1.5x as much to detect as to decode and resize (1080p
    H.264), so ~60 % of the CPUs go to detector actors of 2 threads each and the rest to
    decode tasks of one thread; on 2 CPUs that is one actor with 2 threads beside one
    decode task, and the OS shares the cores between whichever has work. With GPUs there
    is one actor per ``detector_gpus`` and every CPU decodes.
    """
    res, det = config.resources, config.detector
    cpus = max(1.0, cluster.get("CPU", 1.0))
    if res.detector_gpus > 0:
        if cluster.get("GPU", 0) < res.detector_gpus:
            raise ConfigError(
                f"resources.detector_gpus is {res.detector_gpus:g} but the Ray cluster has "
                f"{cluster.get('GPU', 0):g} GPUs (set it to 0 for CPU inference)"
            )
        workers = res.detector_workers or max(1, int(cluster.get("GPU", 0) // res.detector_gpus))
        threads = det.threads
    else:
        threads = det.threads or int(min(2, cpus))
        workers = res.detector_workers or max(1, round(cpus * 0.6 / threads))
    free = cpus - workers * res.detector_cpus
    decoders = max(1, int(free // res.decode_cpus)) if res.decode_cpus > 0 else max(1, int(cpus))
    return Sizing(detector_workers=workers, detector_threads=threads, decoders=decoders)
