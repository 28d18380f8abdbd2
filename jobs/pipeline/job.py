"""The batch job on Ray: probe, plan, decode, detect, commit.

Why Ray core rather than Ray Data: the job's unit of failure and of commit is a shard of
one video (or a pack of short ones). Ray core lets the driver own exactly that: each
shard is one streaming-generator decode task (bounded by generator backpressure) whose
batches go straight from the object store to detector actors that load the model once;
the driver sees only small detection arrays, commits a shard's rows atomically when its
last batch is back, and retries or fails a shard on its own (crash, hang, bad data)
without touching the others. Ray Data's streaming executor would own retries and output
files itself, and a single bad video would fail its whole dataset.

Memory is bounded whatever the videos' length: a decode task holds at most its shard's
resized frames (``planning.shard_frames`` x 260 x 260 x 3 bytes, ~200 MB for 1,024 frames;
see :func:`jobs.pipeline.decode.decode_shard` for why it reads a shard straight through), at most
``max_decoders`` run at once, the driver pulls batches only while the detector actors
have room (``inflight_batches`` each), and frames never reach the driver.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from jobs.pipeline.calibrate import pick_calibration, start_calibration
from jobs.config import JobConfig
from jobs.pipeline.decode import decode_shard
from jobs.errors import ConfigError, one_line
from jobs.inputs import VideoInput
from jobs.pipeline.plan import Shard, plan_shards, split_pack
from jobs.pipeline.actor import DetectorActor, WeightsPayload
from jobs.pipeline.probe import ProbeError, VideoInfo, probe_video
from jobs.results.tracks import finish_tracks
from sinks.parquet import FrameSink
from sinks.schema import frames_table

logger = logging.getLogger(__name__)



@dataclass
class _Attempt:
    shard: Shard
    attempt: int
    gen: Any
    started: float
    last_progress: float
    next_seq: int = 0
    pending: dict[Any, int] = field(default_factory=dict)  # result ref -> sequence number
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    exhausted: bool = False
    running: bool = False  # the decode task has started (it yielded its STARTED marker)


@dataclass
class JobResult:
    """What the driver returns: one dict per video (``videos.parquet`` rows)."""

    videos: list[dict[str, Any]]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [v for v in self.videos if v["status"] != "done"]


def _probe_all(ray: Any, videos: list[VideoInput], timeout_s: float) -> tuple[dict[str, VideoInfo], dict[str, str]]:
    """Probes every video in Ray workers; a crash or hang fails that video only."""
    remote = ray.remote(num_cpus=0.5, max_retries=0)(probe_video)
    refs = {remote.remote(v.path): v for v in videos}
    infos: dict[str, VideoInfo] = {}
    errors: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=max(0.0, deadline - time.monotonic()))
        for ref in ready:
            video = refs[ref]
            try:
                infos[video.video] = ray.get(ref)
            except ProbeError as exc:  # Ray re-raises it wrapped; ``cause`` is the original
                errors[video.video] = str(getattr(exc, "cause", None) or exc)
            except Exception as exc:  # a Ray error: the probe worker crashed or raised
                errors[video.video] = f"probe failed ({one_line(exc, limit=300)})"
        if time.monotonic() >= deadline:
            break
    for ref in pending:
        ray.cancel(ref, force=True)
        errors[refs[ref].video] = f"probe timed out after {timeout_s:g} s (the decoder hangs on this file)"
    return infos, errors


class _Runner:
    """The driver's scheduling loop over shards, decode generators and detector actors."""

    def __init__(
        self,
        ray: Any,
        config: JobConfig,
        make_actor: Callable[[], Any],
        actors: list[Any],
        max_decoders: int,
        batch_size: int,
        input_size: int,
        class_names: tuple[str, ...],
        sink: FrameSink,
        on_frames: Callable[[int], None],
    ) -> None:
        self.ray = ray
        self.cfg = config
        self.make_actor = make_actor
        self.actors = actors
        self.load = [0] * len(actors)
        self.input_size = input_size
        self.class_names = class_names
        self.sink = sink
        self.on_frames = on_frames
        res = config.resources
        # A decode task reads its shard straight through (decord must not wait: see
        # decode_shard), so its backpressure allows a whole shard's batches: at most
        # ``max_decoders`` shards of resized frames wait in the object store.
        most = max(config.planning.shard_frames * 3 // 2, config.planning.pack_frames)
        self.decode = ray.remote(decode_shard).options(
            num_cpus=res.decode_cpus,
            num_returns="streaming",
            max_retries=0,
            _generator_backpressure_num_objects=-(-most // batch_size) + 2,
        )
        self.failures: dict[str, str] = {}
        self.queue: deque[tuple[Shard, int]] = deque()
        self.active: dict[str, _Attempt] = {}
        self.actor_of: dict[Any, int] = {}
        self.max_decoders = max_decoders
        self.batch_size = batch_size

    # -- life of a shard ------------------------------------------------------------------
    def _start(self, shard: Shard, attempt: int) -> None:
        gen = self.decode.remote(
            shard, input_size=self.input_size, batch_size=self.batch_size,
            threads=self.cfg.resources.decode_threads,
        )
        now = time.monotonic()
        self.active[shard.shard_id] = _Attempt(shard, attempt, gen, now, now)

    def _fail(self, run: _Attempt, error: str) -> None:
        self.active.pop(run.shard.shard_id, None)
        self.ray.cancel(run.gen, force=True)
        for ref in run.pending:
            self._release(ref)
        if len(run.shard.segments) > 1:
            logger.info("shard %s failed (%s); retrying its videos one by one", run.shard.shard_id, error)
            self.queue.extend((s, 0) for s in split_pack(run.shard))
        elif run.attempt < self.cfg.planning.max_retries:
            logger.info("shard %s failed (%s); retry %d", run.shard.shard_id, error, run.attempt + 1)
            self.queue.append((run.shard, run.attempt + 1))
        else:
            for video in run.shard.videos:
                self.failures.setdefault(video, error)

    def _commit(self, run: _Attempt) -> None:
        self.active.pop(run.shard.shard_id)
        parts = [run.results[i] for i in range(run.next_seq)]
        if parts:
            cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        else:
            cat = {
                "video": np.zeros(0, object), "frame": np.zeros(0, np.int64), "time_s": np.zeros(0),
                "counts": np.zeros(0, np.int32), "labels": np.zeros(0, np.int64),
                "scores": np.zeros(0, np.float32), "boxes": np.zeros((0, 4), np.float32),
            }
        expected = run.shard.num_frames
        if len(cat["frame"]) != expected:
            self._fail(run, f"decoded {len(cat['frame'])} of {expected} frames")
            return
        try:
            table = frames_table(
                cat["video"], cat["frame"], cat["time_s"], cat["counts"], cat["labels"], cat["scores"], cat["boxes"],
                self.class_names,
            )
        except Exception as exc:  # a bug met on this shard's data: its videos fail, the job goes on
            logger.exception("shard %s: its detections could not be tabulated", run.shard.shard_id)
            self._fail(run, f"its detections could not be tabulated ({type(exc).__name__}: {one_line(exc, limit=300)})")
            return
        segments = [(s.video, s.frames[0], s.frames[-1]) for s in run.shard.segments]
        self.sink.write(run.shard.shard_id, table, segments)

    def _release(self, ref: Any) -> int:
        """Forgets a finished call; returns the index of the actor it ran on (-1: replaced)."""
        i = self.actor_of.pop(ref, -1)
        if i >= 0:
            self.load[i] -= 1
        return i

    def _replace_actor(self, i: int) -> None:
        """A detector actor died (its process was killed, or OOM): start a fresh one."""
        logger.warning("detector actor %d died; starting a replacement", i)
        self.ray.kill(self.actors[i])
        self.actors[i] = self.make_actor()
        for ref, j in list(self.actor_of.items()):
            if j == i:  # calls queued on the dead actor fail too; their shards retry
                self.actor_of[ref] = -1
        self.load[i] = 0

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)

    # -- the loop -------------------------------------------------------------------------
    def _capacity(self) -> int:
        return len(self.actors) * self.cfg.planning.inflight_batches - sum(self.load)

    def _dispatch(self, run: _Attempt, batch_ref: Any) -> None:
        i = int(np.argmin(self.load))
        result = self.actors[i].__call__.remote(batch_ref)
        self.load[i] += 1
        self.actor_of[result] = i
        run.pending[result] = run.next_seq
        run.next_seq += 1

    def run(self, shards: list[Shard]) -> None:
        self.queue.extend((s, 0) for s in shards)
        timeout = self.cfg.planning.shard_timeout_s
        while self.queue or self.active:
            # a shard whose frames are all decoded only waits for detections: the next
            # one starts decoding meanwhile, so the detectors never wait at a boundary
            while self.queue and sum(not r.exhausted for r in self.active.values()) < self.max_decoders:
                self._start(*self.queue.popleft())
            runs = list(self.active.values())
            gens = [r.gen for r in runs if not r.exhausted]
            results = [ref for r in runs for ref in r.pending]
            waitable = results + (gens if self._capacity() > 0 else [])
            if waitable:
                self.ray.wait(waitable, num_returns=1, timeout=1.0, fetch_local=False)
            now = time.monotonic()
            # pull decoded batches while the actors have room
            for run in runs:
                while not run.exhausted and self._capacity() > 0:
                    ready, _ = self.ray.wait([run.gen], timeout=0, fetch_local=False)
                    if not ready:
                        break
                    try:
                        ref = next(run.gen)
                    except StopIteration:
                        run.exhausted = True
                        break
                    run.last_progress = now
                    if not run.running:  # the STARTED marker
                        run.running = True
                        continue
                    self._dispatch(run, ref)
            # collect detections
            for run in runs:
                if run.shard.shard_id not in self.active:
                    continue
                if run.pending:
                    done, _ = self.ray.wait(list(run.pending), num_returns=len(run.pending), timeout=0)
                    try:
                        for ref in done:
                            out = self.ray.get(ref)
                            self._release(ref)
                            run.results[run.pending.pop(ref)] = out
                            run.last_progress = now
                            self.on_frames(len(out["frame"]))
                    except Exception as exc:  # decode or actor failure, surfaced by Ray
                        i = self._release(ref)
                        run.pending.pop(ref, None)
                        if isinstance(exc, self.ray.exceptions.RayActorError) and i >= 0:
                            self._replace_actor(i)
                        self._fail(run, one_line(exc, limit=300))
                        continue
                if run.exhausted and not run.pending:
                    self._commit(run)
                elif run.running and now - run.last_progress > timeout:
                    self._fail(run, f"no progress for {timeout:g} s (decoder hung or crashed repeatedly)")


@dataclass(frozen=True)
class Sizing:
    """How the job uses the cluster: detector actors, their threads, concurrent decoders."""

    detector_workers: int
    detector_threads: int | None  # torch threads per CPU actor; None on GPU
    decoders: int  # decode tasks running at once


def size_job(cluster: dict[str, float], config: JobConfig) -> Sizing:
    """Resolves the ``null`` (auto) resource settings against the cluster's resources.

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
    return Sizing(workers, threads, decoders)


def run_job(
    ray: Any,
    videos: list[VideoInput],
    config: JobConfig,
    weights: WeightsPayload,
    sink: FrameSink,
    *,
    overwrite: bool,
    on_plan: Callable[[int], None] = lambda n: None,
    on_frames: Callable[[int], None] = lambda n: None,
    timings: dict[str, float] | None = None,
) -> JobResult:
    """Runs the whole job on the connected Ray cluster and commits its output.

    ``timings`` (seconds of phases the caller measured, e.g. Ray's start) go to job.json
    beside this function's own.
    """
    timings = dict(timings or {})
    started = datetime.now(timezone.utc).isoformat()
    if config.annotate.enabled and sink.annotated_dir is None:
        raise ConfigError(f"{sink.location}: --annotate writes videos, so --out must be a local or mounted path")
    sizing = size_job(ray.cluster_resources(), config)
    job = _job_record(config, weights, videos, started)
    committed = sink.start(job, fingerprint=config.result_fingerprint(weights.sha256), overwrite=overwrite)

    res = config.resources
    # Ray does not restart these actors: the runner replaces a dead one itself and
    # retries the shards it was working on, so no frame is lost or doubled.
    actor_cls = ray.remote(DetectorActor).options(
        num_cpus=res.detector_cpus, num_gpus=res.detector_gpus, max_restarts=0, max_task_retries=0,
    )
    payload = ray.put(weights)
    use_gpu = res.detector_gpus > 0
    calibration: list[Any] = []  # int8: refs of the calibration frames, set after the probe

    def make_actor() -> Any:
        actor = actor_cls.remote(payload, config.detector, threads=sizing.detector_threads, use_gpu=use_gpu)
        if calibration:
            actor.calibrate.remote(*calibration)  # runs before any batch: an actor runs calls in order
        return actor

    # the actors load the model while the videos are probed
    actors = [make_actor() for _ in range(sizing.detector_workers)]
    t0 = time.monotonic()
    infos, failures = _probe_all(ray, videos, config.planning.probe_timeout_s)
    timings["probe_s"] = time.monotonic() - t0
    probed = [(v.video, v.path, infos[v.video]) for v in videos if v.video in infos]
    if config.detector.int8:
        picks = pick_calibration(probed, config.detector.calibration_frames)
        calibration = start_calibration(ray, picks, input_size=weights.spec.input_size)
        # the shards start decoding meanwhile; each actor quantizes before its first batch
        for actor in actors:
            actor.calibrate.remote(*calibration)
        job["int8_calibration"] = [{"video": v, "frames": f} for v, _, f in picks]
    shards = plan_shards(
        probed, config.sampling, shard_frames=config.planning.shard_frames,
        pack_frames=config.planning.pack_frames, committed=committed,
    )
    on_plan(sum(s.num_frames for s in shards))
    logger.info(
        "%d videos, %d shards to run (%d probe failures); %s",
        len(videos), len(shards), len(failures), sizing,
    )

    batch_size = config.detector.batch_size
    if batch_size is None:  # on GPU the actor sizes batches to its card; CPUs gain nothing past 16
        batch_size = ray.get(actors[0].batch_size.remote()) if use_gpu and shards else 16
    t0 = time.monotonic()
    runner = _Runner(
        ray, config, make_actor, actors, sizing.decoders, batch_size, weights.spec.input_size,
        weights.spec.class_names, sink, on_frames,
    )
    try:
        if shards:
            runner.run(shards)
        if config.detector.int8:
            job["detector_backend"], job["int8_frames"] = _int8_record(ray, runner.actors)
        timings["run_s"] = time.monotonic() - t0
        failures.update({k: v for k, v in runner.failures.items() if k not in failures})

        t0 = time.monotonic()
        # the idle actors render too: their processes and CPUs are already there
        people = finish_tracks(ray, sink, probed, failures, config, helpers=runner.actors)
        timings["tracks_s"] = time.monotonic() - t0
    finally:
        runner.close()
    rows = _video_rows(videos, infos, failures, sink.frame_totals(), config)
    for row in rows:
        row.update(people.get(row["video"], {"people": 0, "people_unmasked": 0}))
    job.update(
        status="done" if not any(r["status"] != "done" for r in rows) else "failed",
        finished=datetime.now(timezone.utc).isoformat(),
        fingerprint=config.result_fingerprint(weights.sha256),
        sizing={"detector_workers": sizing.detector_workers, "detector_threads": sizing.detector_threads,
                "decoders": sizing.decoders, "batch_size": batch_size},
        timings={k: round(v, 3) for k, v in timings.items()},
    )
    sink.commit(rows, job)
    return JobResult(rows)


def _int8_record(ray: Any, actors: list[Any]) -> tuple[str, dict[str, int]]:
    """The backend the int8 actors ran, and the frames they kept in int8 and ran again in
    float32 (a dead actor's are lost; its replacement counts its own)."""
    backend, error = "", "no detector actor"
    total = {"int8": 0, "float32": 0}
    for actor in actors:
        try:
            stats = ray.get(actor.frame_counts.remote(), timeout=5)
        except Exception as exc:  # a Ray error: that actor died or its call failed
            error = one_line(exc, limit=300)
            continue
        backend = backend or stats["backend"]
        total = {k: total[k] + stats[k] for k in total}
    return backend or f"unknown ({error})", total


def _video_rows(
    videos: list[VideoInput],
    infos: dict[str, VideoInfo],
    failures: dict[str, str],
    totals: dict[str, dict[str, int]],
    config: JobConfig,
) -> list[dict[str, Any]]:
    from jobs.pipeline.plan import sample_frames

    rows = []
    for v in videos:
        info = infos.get(v.video)
        t = totals.get(v.video, {"frames": 0, "faces": 0, "masked": 0, "unmasked": 0})
        error = failures.get(v.video)
        sampled = len(sample_frames(info, config.sampling)) if info is not None else 0
        if error is None and info is not None and t["frames"] != sampled:
            error = f"{t['frames']} of {sampled} sampled frames committed"
        rows.append(
            {
                "video": v.video,
                "path": v.path,
                "status": "failed" if error else "done",
                "error": error,
                "frames_total": info.frames_total if info else None,
                "frames_processed": t["frames"],
                "fps": info.fps if info else None,
                "duration_s": info.duration_s if info else None,
                "width": info.width if info else None,
                "height": info.height if info else None,
                "faces": t["faces"],
                "masked": t["masked"],
                "unmasked": t["unmasked"],
                "compliance": (t["masked"] / t["faces"]) if t["faces"] else None,
            }
        )
    return rows


def _job_record(config: JobConfig, weights: WeightsPayload, videos: list[VideoInput], started: str) -> dict[str, Any]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import pyarrow
    import ray

    try:
        torch_version = version("torch")  # the driver does not import torch
    except PackageNotFoundError:
        torch_version = "not installed"

    return {
        "config": config.to_dict(),
        "weights": {"path": weights.path, "format": weights.format, "sha256": weights.sha256,
                    "input_size": weights.spec.input_size},
        "inputs": len(videos),
        "versions": {
            "maskjobs": _version(), "python": platform.python_version(), "ray": ray.__version__,
            "torch": torch_version, "pyarrow": pyarrow.__version__,
        },
        "started": started,
        "host": os.uname().nodename,
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("maskjobs")
    except PackageNotFoundError:
        return "unknown"
