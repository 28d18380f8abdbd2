"""How a job uses the cluster: detector actors, their threads, and decode tasks at once.

The split between decoding and detecting follows the job's work, not a fixed share. A
sampled frame costs its detector call plus the decoding of every source frame up to it:
at every frame of 1080p H.264 that is ~3 ms of decoding to ~9 ms of detecting (the job is
detector-bound), at 2 frames a second of 30 fps footage ~15 x 2 ms to 9 ms (decode-bound),
and on keyframes alone one seek and one decode per kept frame. :func:`size_job` sizes from
an estimate of those costs before anything ran (:func:`plan_costs`); while the job runs the
driver re-sizes the decoders from the costs the decode tasks and actors measured
(:class:`MeasuredCosts`) and from the CPUs the cluster has then (an autoscaler's new nodes
get decoders).

The CPUs of this machine (:func:`local_cpus`, the embedded Ray's size) are those this
process may run on and its container's quota allows, not ``os.cpu_count()``: a 2-CPU
container on a 64-core host has 2.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from jobs.config import JobConfig
from jobs.errors import ConfigError

logger = logging.getLogger(__name__)

# Prior per-frame CPU costs (one core, seconds), measured with benchmarks/bench_sampling.py on
# 720p and 1080p H.264 (2-core AVX-512 Xeon) and scaled by pixels: the split before the job's
# own figures come in. Only their ratios matter.
SKIP_S_PER_MPIX = 0.45e-3  # a frame between sampled ones (jobs.sparse: non-reference frames not decoded)
KEEP_S_PER_MPIX = 1.6e-3  # decode + RGB + resize to the model's input
DETECT_S = 9.0e-3  # the float32 detector, one frame


@dataclass(frozen=True)
class Sizing:
    """How the job uses the cluster: detector actors, their threads, concurrent decoders."""

    detector_workers: int
    detector_threads: int | None  # torch threads per CPU actor; None on GPU
    decoders: int  # decode tasks running at once
    decode_cpus: float = 1.0  # CPUs each decode task reserves in Ray
    detector_cpus: float = 1.0  # CPUs each detector actor reserves in Ray (see :func:`_actor_cpus`)


@dataclass(frozen=True)
class WorkCosts:
    """CPU seconds per sampled frame: decoding it (and the frames skipped to reach it) and
    detecting it. Only their ratio sizes the job."""

    decode_s: float
    detect_s: float

    @property
    def decode_share(self) -> float:
        """The share of the job's CPU that decoding takes, in [0, 1]."""
        total = self.decode_s + self.detect_s
        return self.decode_s / total if total > 0 else 0.5


def plan_costs(*, kept: int, decoded: int, seeks: int, megapixels: float) -> WorkCosts:
    """Prior :class:`WorkCosts` of a plan: ``kept`` sampled frames, ``decoded`` source frames
    decoded to reach them (kept ones included), ``seeks`` of them reached by a seek to a
    keyframe (each decodes that keyframe), at ``megapixels`` (mean source frame size)."""
    kept = max(1, kept)
    skipped = max(0, decoded - kept)
    decode = (skipped * SKIP_S_PER_MPIX + kept * KEEP_S_PER_MPIX) * megapixels
    decode += seeks * KEEP_S_PER_MPIX * megapixels  # a seek's keyframe costs about a kept frame more
    return WorkCosts(decode_s=decode / kept, detect_s=DETECT_S)


class MeasuredCosts:
    """The job's costs as measured so far: decode CPU seconds (from the decode tasks) and
    detector CPU seconds (from the actors) of the sampled frames whose detections are back."""

    def __init__(self) -> None:
        self.frames = 0
        self.decode_s = 0.0
        self.detect_s = 0.0

    def add(self, frames: int, decode_s: float, detect_s: float) -> None:
        self.frames += frames
        self.decode_s += decode_s
        self.detect_s += detect_s

    def costs(self, *, least_frames: int = 64) -> WorkCosts | None:
        """Per-frame costs once ``least_frames`` frames are measured (the actors' first batch
        builds the model's kernels and costs several times a later one); None before."""
        if self.frames < least_frames or self.decode_s + self.detect_s <= 0:
            return None
        return WorkCosts(self.decode_s / self.frames, self.detect_s / self.frames)


def size_job(cluster: dict[str, float], config: JobConfig, costs: WorkCosts | None = None) -> Sizing:
    """Resolves the ``null`` (auto) resource settings against the cluster's resources
    (``ray.cluster_resources()``: ``{"CPU": n, "GPU": n, ...}``) and the job's ``costs``
    (None: every frame of 1080p). Explicit ``detector_workers`` are kept and the decoders
    get the CPUs they leave.

    On CPUs the detector actors run 1 thread each when the job is detector-bound, else 2
    (``detector.threads``, :func:`_cpu_threads`), and there are as many as the detector's
    share of the CPUs plus half a CPU fills (:func:`_cpu_actors`); the decode tasks get the
    decoding share, at least one. Both reserve ``detector_cpus`` / ``decode_cpus`` CPUs in Ray unless that
    would keep the decoders the work needs from running: then each decode task reserves
    its share of the CPUs the actors leave (a decode-bound job on 2 CPUs: one actor, two
    decoders of half a CPU each, and the OS shares the cores between whichever has work).
    With GPUs there is one actor per ``detector_gpus`` and every CPU decodes.
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
        each = _actor_cpus(cpus, workers, res.detector_cpus)
        return Sizing(detector_workers=workers, detector_threads=det.threads,
                      **_leftover(cpus, workers * each, res.decode_cpus), detector_cpus=each)
    share = (costs or plan_costs(kept=1, decoded=1, seeks=0, megapixels=2.07)).decode_share
    threads = det.threads or min(_cpu_threads(share), max(1, int(cpus)))
    if res.detector_workers:  # the user's actors: the decoders get what they leave
        each = _actor_cpus(cpus, res.detector_workers, res.detector_cpus)
        return Sizing(res.detector_workers, threads, **_leftover(cpus, res.detector_workers * each, res.decode_cpus),
                      detector_cpus=each)
    workers = _cpu_actors(cpus, share, threads)
    each = _actor_cpus(cpus, workers, res.detector_cpus)
    return Sizing(detector_workers=workers, detector_threads=threads,
                  **_decoders(cpus, workers * each, share, res.decode_cpus, res.decode_threads), detector_cpus=each)


DETECTOR_BOUND_SHARE = 1 / 3  # a decode share under this: single-thread actors (:func:`_cpu_threads`)


def _cpu_threads(share: float) -> int:
    """Torch threads per CPU actor when ``detector.threads`` is null: 1 for a detector-bound
    job (decoding under :data:`DETECTOR_BOUND_SHARE` of its CPU: every frame), else 2.

    An actor's threads meet at a barrier after every layer; beside a decode task that runs
    all the time (every frame: 3 threads on 2 cores) one of them often waits for a core while
    the other waits for it: the 2-thread actor's batches took 3x longer while the decoder ran.
    Measured on 2 cores, every frame of 7.5 min of 720p, run phase: one 2-thread actor
    41.5-42.9 s, two 1-thread actors 37.8-38.6 s. Sampled jobs measured the other way round
    (2 fps: 9.8-9.9 s against 10.3-10.4 s; ``--keyframes``, the 30-s clip: the second actor's
    start-up, ~1 s of CPU, is not won back), so there the actor keeps 2 threads.
    """
    return 1 if share < DETECTOR_BOUND_SHARE else 2


def _cpu_actors(cpus: float, share: float, threads: int) -> int:
    """CPU detector actors of ``threads`` threads for a job whose decoding takes ``share`` of
    its CPU: the detector's share of the ``cpus`` plus half a CPU, rounded up, at most one per
    ``threads`` CPUs, at least one. The half CPU to spare: the OS shares the cores between
    processes, and two 1-thread actors beside a decoder on 2 CPUs keep both cores detecting
    whenever the decoder waits."""
    most = max(1, int(cpus // max(1, threads)))
    return max(1, min(most, math.ceil((cpus * (1 - share) + 0.5) / max(1, threads) - 1e-9)))


ROOM_CPUS = 0.5  # CPUs the detector actors leave unreserved at the least: a probe or a decoder always runs


def _actor_cpus(cpus: float, workers: int, detector_cpus: float) -> float:
    """What each of ``workers`` actors reserves: ``detector_cpus``, or less so that together
    they leave :data:`ROOM_CPUS` of the ``cpus``. Actors holding every CPU would keep the
    probes and decode tasks from ever running (on a 1-CPU machine, one actor does): the job
    would wait forever. The threads an actor runs do not change; the OS shares the cores."""
    if detector_cpus <= 0 or workers * detector_cpus <= cpus - ROOM_CPUS:
        return max(0.0, detector_cpus)
    return max(0.0, math.floor((cpus - ROOM_CPUS) / workers * 1e4) / 1e4)


DECODE_SPARE_CPUS = 0.25  # decoders beyond the decode share, in CPUs (:func:`_decoders`)


def _decoders(cpus: float, held: float, share: float, decode_cpus: float, decode_threads: int) -> dict[str, float]:
    """``decoders`` (the decode share of ``cpus`` plus :data:`DECODE_SPARE_CPUS`, in tasks of
    ``decode_threads`` threads, rounded up, at most one per ``decode_threads`` CPUs, at least
    one) and ``decode_cpus`` (what each reserves: ``decode_cpus``, or less so that they all
    fit beside the ``held`` CPUs of the actors).

    With fewer than the share, decoding alone would take longer than the whole job's CPU
    time spread over every core. The quarter CPU to spare: a decode task does not keep its
    core busy all the time (it hands batches over and waits on Ray), and the share is an
    average over videos whose costs differ (720p and 1080p in one job). A spare decoder
    costs little while the detector is behind: it waits on backpressure. Measured on 2
    cores, every 15th frame of 7.5 min of 720p + 1080p (``benchmarks/bench_sampling.py``): a
    measured share of 0.43 gave one decoder, and once only the 1080p video was left the
    detector waited on it, the cores ~75% busy. Every frame (a share of ~0.22-0.27) keeps
    one decoder on 2 CPUs, as before.
    """
    threads = max(1, decode_threads)
    most = max(1, math.ceil(cpus / threads - 1e-9))
    want = max(1, min(most, math.ceil((cpus * share + DECODE_SPARE_CPUS) / threads - 1e-9)))
    free = cpus - held
    if decode_cpus <= 0:
        return {"decoders": want, "decode_cpus": 0.0}
    if free >= want * decode_cpus:
        return {"decoders": want, "decode_cpus": decode_cpus}
    if free <= 0:  # the actors hold every CPU: one decoder, unreserved (reserving any would wait forever)
        return {"decoders": 1, "decode_cpus": 0.0}
    # Ray reserves in steps of 1e-4 CPU: round down so that ``want`` of them fit in ``free``
    each = math.floor(free / want * 1e4) / 1e4
    return {"decoders": want, "decode_cpus": each}


def _leftover(cpus: float, held: float, decode_cpus: float) -> dict[str, float]:
    """Decoders on every CPU the actors leave (``cpus - held``), ``decode_cpus`` each; where
    less than one task's reservation is left, one decoder reserving what is left, and none at
    all when nothing is (a task reserving CPUs the actors hold would never run: the job would
    wait forever). ``decode_cpus`` 0: one decoder per CPU, unreserved."""
    if decode_cpus <= 0:
        return {"decoders": max(1, int(cpus)), "decode_cpus": 0.0}
    free = cpus - held
    if free >= decode_cpus:
        return {"decoders": int(free // decode_cpus), "decode_cpus": decode_cpus}
    return {"decoders": 1, "decode_cpus": max(0.0, math.floor(free * 1e4) / 1e4)}


def resize_job(sizing: Sizing, cluster: dict[str, float], config: JobConfig, costs: WorkCosts) -> Sizing:
    """``sizing`` re-sized for the ``cluster``'s resources now and the measured ``costs``.

    Detector actors are only ever added (one that runs is never stopped mid-job): as many as
    :func:`size_job` would start now, when that is more, so nodes an autoscaler adds
    get actors as well as decoders; with GPUs, one per ``detector_gpus`` of the GPUs listed.
    Explicit ``detector_workers`` stay. The decoders get the decode share of the CPUs beside
    the actors (with GPU actors or explicit ``detector_workers``: every CPU the actors leave).
    """
    res = config.resources
    cpus = max(1.0, cluster.get("CPU", 1.0))
    workers, each = sizing.detector_workers, sizing.detector_cpus
    wanted = workers
    if res.detector_gpus > 0 and not res.detector_workers:
        wanted = int(cluster.get("GPU", 0) // res.detector_gpus)
    elif not res.detector_workers and sizing.detector_threads:
        wanted = _cpu_actors(cpus, costs.decode_share, sizing.detector_threads)
    if each > 0:  # new actors reserve what the first ones do, and leave ROOM_CPUS too
        wanted = min(wanted, math.floor((cpus - ROOM_CPUS) / each + 1e-9))
    workers = max(workers, wanted)
    if res.detector_gpus > 0 or res.detector_workers:
        return Sizing(workers, sizing.detector_threads, **_leftover(cpus, workers * each, res.decode_cpus),
                      detector_cpus=each)
    return Sizing(workers, sizing.detector_threads,
                  **_decoders(cpus, workers * each, costs.decode_share, res.decode_cpus, res.decode_threads),
                  detector_cpus=each)


# --- the CPUs this process may use -------------------------------------------------------


def local_cpus(*, cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup", proc_cgroup: str | os.PathLike[str] = "/proc/self/cgroup") -> int:
    """The CPUs this process may use: its affinity (``os.sched_getaffinity``, e.g. ``taskset``)
    capped by its cgroup's CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``, on its own cgroup and every parent), rounded down, at least 1.
    ``cgroup_root`` and ``proc_cgroup`` are parameters for tests."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root=cgroup_root, proc_cgroup=proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota + 1e-9)))
    return max(1, cpus)


def cgroup_cpu_quota(
    *, cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup", proc_cgroup: str | os.PathLike[str] = "/proc/self/cgroup"
) -> float | None:
    """The CPUs this process's cgroup may use (quota / period, the smallest along its path to
    the root), or None when no quota applies or none can be read."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    root = Path(cgroup_root)
    found: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # cgroup v2: "0::/path"
            for folder in _up_to(root, rel):
                found += _v2_quota(folder / "cpu.max")
        elif "cpu" in controllers.split(","):  # cgroup v1: "N:cpu,cpuacct:/path"
            base = next((root / name for name in (controllers, "cpu,cpuacct", "cpu") if (root / name).is_dir()), None)
            if base is not None:
                for folder in _up_to(base, rel):
                    found += _v1_quota(folder)
    return min(found) if found else None


def _up_to(base: Path, rel: str) -> list[Path]:
    """``base/rel`` and each parent up to ``base`` (a container sees its own cgroup as "/")."""
    parts = [p for p in rel.strip("/").split("/") if p and p != ".."]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _v2_quota(path: Path) -> list[float]:
    try:
        fields = path.read_text().split()
    except OSError:
        return []
    if len(fields) < 1 or fields[0] == "max":
        return []
    try:
        quota = float(fields[0])
        period = float(fields[1]) if len(fields) > 1 else 100_000.0
    except ValueError:
        return []
    return [quota / period] if quota > 0 and period > 0 else []


def _v1_quota(folder: Path) -> list[float]:
    try:
        quota = float((folder / "cpu.cfs_quota_us").read_text().strip())
        period = float((folder / "cpu.cfs_period_us").read_text().strip())
    except (OSError, ValueError):
        return []
    return [quota / period] if quota > 0 and period > 0 else []


# --- sizing while the job runs ----------------------------------------------------------


def prior_costs(config: JobConfig, *, source_fps: float = 30.0, megapixels: float = 2.07) -> WorkCosts:
    """:class:`WorkCosts` guessed from the sampling settings alone (before any video is
    probed): ``stride`` decodes that many frames per sample, ``fps`` ``source_fps / fps``,
    keyframes one seek and one frame."""
    s = config.sampling
    if s.keyframes:
        return plan_costs(kept=1, decoded=1, seeks=1, megapixels=megapixels)
    per = s.stride if s.fps is None else max(1.0, source_fps / s.fps)
    return plan_costs(kept=1000, decoded=round(per * 1000), seeks=0, megapixels=megapixels)


class JobTuner:
    """Re-sizes a running job (:func:`resize_job`: more decoders or fewer, more detector
    actors): every ``every_s`` seconds, from the costs measured so far
    (:class:`MeasuredCosts`, fed by :meth:`observe`; the plan's estimate until enough
    frames are back) and the resources the cluster lists then. Pure logic: the driver reads
    the cluster and applies what :meth:`update` returns."""

    def __init__(self, sizing: Sizing, config: JobConfig, planned: WorkCosts, *, every_s: float = 2.0) -> None:
        self.sizing = sizing
        self.config = config
        self.planned = planned
        self.every_s = every_s
        self.measured = MeasuredCosts()
        self.changes: list[dict[str, float]] = []  # job.json: when and to what the job was re-sized
        self._next = 0.0

    def observe(self, frames: int, decode_s: float, detect_s: float) -> None:
        """Detections of ``frames`` sampled frames came back, with their measured CPU costs."""
        self.measured.add(frames, decode_s, detect_s)

    def due(self, now: float) -> bool:
        """Whether :meth:`update` should run now (every ``every_s``)."""
        if now < self._next:
            return False
        self._next = now + self.every_s
        return True

    def costs(self) -> WorkCosts:
        return self.measured.costs() or self.planned

    def update(self, cluster: dict[str, float], *, at_s: float = 0.0) -> Sizing | None:
        """The new sizing when the job should change for ``cluster`` (its resources now)
        and the costs so far; None when it stays."""
        new = resize_job(self.sizing, cluster, self.config, self.costs())
        if new == self.sizing:
            return None
        logger.info("detector actors %d -> %d, decoders %d -> %d (%.2f CPUs each; decode share %.2f, %g CPUs)",
                    self.sizing.detector_workers, new.detector_workers, self.sizing.decoders, new.decoders,
                    new.decode_cpus, self.costs().decode_share, cluster.get("CPU", 0))
        self.changes.append({"at_s": round(at_s, 2), "detector_workers": new.detector_workers,
                             "decoders": new.decoders, "decode_cpus": new.decode_cpus,
                             "cpus": cluster.get("CPU", 0.0), "decode_share": round(self.costs().decode_share, 3)})
        self.sizing = new
        return new
