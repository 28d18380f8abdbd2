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

The parts: :mod:`~jobs.pipeline.sizing` (how many actors and decoders),
:mod:`~jobs.pipeline.scheduler` (which shard attempt runs, retries, splits, time-outs: pure
logic), :mod:`~jobs.pipeline.pool` (the detector actor pool), :mod:`~jobs.pipeline.commit`
(a shard's rows to the sink). This module runs the job and the loop that ties them together.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jobs.config import DetectorConfig, JobConfig
from jobs.errors import ConfigError, InputError, one_line
from jobs.identity import identify_all
from jobs.inputs import VideoInput, escape_name
from jobs.pipeline.actor import DetectorActor, WeightsPayload
from jobs.pipeline.pool import ActorPool
from jobs.pipeline.calibrate import collect_calibration, pick_calibration
from jobs.pipeline.commit import commit_shard, damage_notes
from jobs.pipeline.decode import decode_shard
from jobs.pipeline.placement import Started
from jobs.pipeline.nodes import on_every_node
from jobs.pipeline.plan import Shard, decoded_frames, plan_shards, sample_frames, shard_sizes
from jobs.pipeline.probe import probe_all, start_probes
from jobs.pipeline.ray_private import StreamingTask
from jobs.pipeline.records import DetectedBatch
from jobs.pipeline.resume import drop_changed_videos, drop_misread_videos
from jobs.pipeline.scheduler import Scheduler, ShardRun
from jobs.pipeline.tracking import OnlineTracks
from jobs.pipeline.tiles import job_tiles, pictures_per_frame
from jobs.pipeline.sizing import JobTuner, Sizing, WorkCosts, plan_costs, prior_costs, size_job
from jobs.remote import is_remote
from jobs.remux import remux_kind
from jobs.results.coverage import add_coverage, video_coverage
from jobs.metadata import MetadataResolver, resolve_all, video_meta_columns
from jobs.results.privacy import AGGREGATE, strip_boxes
from jobs.results.tracks import finish_tracks
from jobs.results.zones import compute_zones, load_zones
from jobs.stage import clear_stage
from jobs.video import ProbedVideo, VideoInfo
from sinks.location import display_location
from sinks.store import OutputStore

__all__ = ["JobResult", "Sizing", "run_job", "size_job"]

logger = logging.getLogger(__name__)


@dataclass
class JobResult:
    """What the driver returns: one dict per video (``videos.parquet`` rows)."""

    videos: list[dict[str, Any]]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [v for v in self.videos if v["status"] == "failed"]

    @property
    def partial(self) -> list[dict[str, Any]]:
        """Videos cut off mid-recording: their frames before the damage are committed."""
        return [v for v in self.videos if v["status"] == "partial"]


@dataclass(kw_only=True)
class _ActorFactory:
    """Starts one detector actor. Once int8 calibration frames are known (``calibration``:
    refs of their arrays), a new actor, a replacement included, quantizes on them before
    its first batch: an actor runs its calls in order."""

    actor_cls: Any  # the Ray actor class of DetectorActor, with its resources
    payload: Any  # ref of the WeightsPayload, shipped once
    config: DetectorConfig
    threads: int | None
    use_gpu: bool
    calibration: list[Any] | None = None  # None: not int8 (or not calibrated yet); []: int8 fell back to float32

    def __call__(self) -> Any:
        actor = self.actor_cls.remote(self.payload, self.config, threads=self.threads, use_gpu=self.use_gpu)
        if self.calibration is not None:
            actor.calibrate.remote(*self.calibration)  # runs before any batch: an actor runs calls in order
        return actor


def _start_int8(
    ray: Any, probed: list[ProbedVideo], config: JobConfig, pool: ActorPool, factory: _ActorFactory, *, input_size: int
) -> list[dict[str, Any]]:
    """Reads the int8 calibration frames (each video's read bounded by ``probe_timeout_s``
    from its start, all by twice that; a video that fails or runs late is left out) and
    has every actor quantize on them before its first batch; returns job.json's
    ``int8_calibration`` record (the frames used)."""
    picks = pick_calibration(probed, config.detector.calibration_frames)
    factory.calibration, skipped = collect_calibration(
        ray, picks, input_size=input_size, timeout_s=config.planning.probe_timeout_s,
    )
    if picks and not factory.calibration:
        logger.warning("int8: no calibration frame could be read; the detector runs in float32")
    for actor in pool.actors:
        actor.calibrate.remote(*factory.calibration)
    pool.restart_clocks()  # quantizing is not a hang
    return [{"video": v, "frames": f} for v, _, f in picks if v not in skipped]


def _decode_task(
    ray: Any, config: JobConfig, *, batch_size: int, input_size: int, num_cpus: float | None = None
) -> Callable[[Shard], Any]:
    """``shard -> ObjectRefGenerator``: starts a :func:`decode_shard` task, which yields its
    STARTED marker and then refs of its batches."""
    # A decode task reads its shard straight through (decord must not wait: see
    # decode_shard), so its backpressure allows a whole shard's batches: at most
    # ``max_decoders`` shards of resized frames wait in the object store.
    most = max(config.planning.shard_frames * 3 // 2, config.planning.pack_frames)
    task = StreamingTask(
        ray, decode_shard, backpressure=-(-most // batch_size) + 2,
        num_cpus=config.resources.decode_cpus if num_cpus is None else num_cpus, max_retries=0,
    )
    return functools.partial(
        task.remote, input_size=input_size, batch_size=batch_size, threads=config.resources.decode_threads,
        tiles=job_tiles(config.detector), target_px=config.detector.tiles_target_px,
    )


@dataclass(kw_only=True)
class _ShardLoop:
    """The driver's loop over shards, decode generators and detector actors: starts decode
    tasks as the :class:`Scheduler` allows, feeds their batches to the :class:`ActorPool`
    while it has room, collects detections, and commits, retries or fails each attempt."""

    ray: Any
    scheduler: Scheduler
    pool: ActorPool
    start_decode: Callable[[Shard], Any]
    commit: Callable[[Shard, list[DetectedBatch]], str | None]
    on_frames: Callable[[int], None]
    on_batch: Callable[[DetectedBatch], None] = lambda out: None  # every batch's detections, as they come back
    on_tick: Callable[[], None] = lambda: None  # once per turn of the loop
    on_damage: Callable[[list[dict[str, Any]]], None] = lambda notes: None  # committed ``damaged`` notes
    on_committed: Callable[[list[DetectedBatch]], None] = lambda parts: None  # a committed shard's batches
    started: dict[Any, Any] = field(default_factory=dict)  # ShardRun -> ref of its task's Started marker
    placed: dict[str, Any] = field(default_factory=dict)  # committed shard id -> ref of its Started marker

    def run(self) -> None:
        """Runs until every shard has committed or failed (see ``scheduler.failures``)."""
        scheduler = self.scheduler
        while scheduler.busy():
            self.on_tick()
            # a shard whose frames are all decoded only waits for detections: the next
            # one starts decoding meanwhile, so the detectors never wait at a boundary
            while (shard_try := scheduler.next_to_start()) is not None:
                gen = self.start_decode(shard_try.shard)
                scheduler.begin(shard_try, gen, time.monotonic())
            runs = scheduler.running()
            gens = [r.gen for r in runs if not r.exhausted]
            results = [ref for r in runs for ref in r.pending]
            waitable = results + (gens if self.pool.capacity() > 0 else [])
            if waitable:
                self.ray.wait(waitable, num_returns=1, timeout=1.0, fetch_local=False)
            now = time.monotonic()
            for run in runs:  # pull decoded batches while the actors have room
                self._pull(run, now)
            for run in runs:  # collect detections
                if scheduler.is_active(run):
                    self._collect(run, now)
            self._resubmitted(self.pool.check())

    def _resubmitted(self, moved: dict[Any, Any]) -> None:
        """Batches of a hung detector actor were sent again (``{old ref: new ref}``); a batch
        that hung actors too often (``new`` None) fails its shard."""
        claimed, failing = set(), []
        for old, new in moved.items():
            for run in self.scheduler.running():
                if old in run.pending:
                    if new is None:
                        run.pending.pop(old)
                        failing.append(run)
                    else:
                        run.resubmitted(old, new)
                        claimed.add(new)
                    break
        for new in moved.values():
            if new is not None and new not in claimed:  # its shard has failed meanwhile
                self.pool.release(new)
        for run in dict.fromkeys(failing):
            if self.scheduler.is_active(run):
                self._fail(run, "a detector actor hung on this shard's frames")

    def _pull(self, run: ShardRun, now: float) -> None:
        """Dispatches ``run``'s decoded batches to the actors while they have room."""
        while not run.exhausted:
            if self.pool.capacity() <= 0:
                run.queued(now)  # waits for the detectors, not for its decoder
                break
            ready, _ = self.ray.wait([run.gen], timeout=0, fetch_local=False)
            if not ready:
                break
            try:
                ref = next(run.gen)
            except StopIteration:
                run.exhausted = True
                break
            if run.took(now):  # not the Started marker
                run.dispatched(self.pool.submit(ref))
            else:
                self.started[run] = ref

    def _collect(self, run: ShardRun, now: float) -> None:
        """Takes ``run``'s detections that are back; commits it once complete, or fails it on
        an error or a stall."""
        if run.pending:
            done, _ = self.ray.wait(list(run.pending), num_returns=len(run.pending), timeout=0)
            try:
                for ref in done:
                    out = self.ray.get(ref)
                    self.pool.release(ref)
                    run.received(ref, out, now)
                    self.on_frames(len(out["frame"]))
                    self.on_batch(out)
            except Exception as exc:  # decode or actor failure, surfaced by Ray
                i = self.pool.release(ref)
                run.pending.pop(ref, None)
                if isinstance(exc, self.ray.exceptions.RayActorError) and i >= 0:
                    self.pool.replace(i)
                self._fail(run, one_line(exc, limit=300))
                return
        if run.complete:
            parts = run.in_order()
            error = self.commit(run.shard, parts)
            if error is None:
                self.scheduler.finish(run)
                self.on_damage(damage_notes(parts))
                self.on_committed(parts)
                if (marker := self.started.pop(run, None)) is not None:
                    self.placed[run.shard.shard_id] = marker
            else:
                self._fail(run, error)
        elif (stall := self.scheduler.stalled(run, now)) is not None:
            self._fail(run, stall)

    def _fail(self, run: ShardRun, error: str) -> None:
        self.started.pop(run, None)
        self.ray.cancel(run.gen, force=True)
        for ref in run.pending:
            self.pool.release(ref)
        self.scheduler.fail(run, error)


def _start_detectors(
    ray: Any, config: JobConfig, weights: WeightsPayload, sizing: Sizing
) -> tuple[_ActorFactory, ActorPool]:
    """Starts ``sizing.detector_workers`` detector actors; returns their factory and pool."""
    res = config.resources
    # Ray does not restart these actors: the pool replaces a dead one itself and the loop
    # retries the shards it was working on, so no frame is lost or doubled.
    factory = _ActorFactory(
        actor_cls=ray.remote(DetectorActor).options(
            num_cpus=sizing.detector_cpus, num_gpus=res.detector_gpus, max_restarts=0, max_task_retries=0,
        ),
        payload=ray.put(weights), config=config.detector, threads=sizing.detector_threads,
        use_gpu=res.detector_gpus > 0,
    )
    pool = ActorPool(
        ray, make_actor=factory, size=sizing.detector_workers, inflight_per_actor=config.planning.inflight_batches,
        hang_timeout_s=config.planning.shard_timeout_s,  # an actor that finishes nothing for this long is hung
    )
    return factory, pool


def run_job(
    ray: Any,
    videos: list[VideoInput],
    config: JobConfig,
    weights: WeightsPayload,
    sink: OutputStore,
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
    sizing = size_job(ray.cluster_resources(), config, prior_costs(config))
    job = _job_record(config, weights, videos, started)
    committed = sink.start(job, fingerprint=config.result_fingerprint(weights.sha256), overwrite=overwrite)
    identities = identify_all({v.video: v.path for v in videos})
    if drop_changed_videos(sink, identities):  # a replaced or re-encoded file: from scratch
        committed = sink.committed_ranges()

    resolver = MetadataResolver.from_config(config.metadata)  # a bad mapping file fails before any work
    if config.zones.file:
        load_zones(Path(config.zones.file))  # so does a bad zones file
    t0 = time.monotonic()
    first = max(1, int(ray.cluster_resources().get("CPU", 1)))  # as many as Ray starts workers with the driver
    tags = {v.video for v in videos if resolver.needs_container(v.video)}  # read by the probes
    probes = start_probes(ray, videos[:first], tags=tags)  # before the actors: they take those workers
    factory, pool = _start_detectors(ray, config, weights, sizing)  # they load the model while the videos are probed
    probes.update(start_probes(ray, videos[first:], tags=tags))
    infos, failures, created = probe_all(ray, probes, config.planning.probe_timeout_s)
    meta = resolve_all(ray, videos, resolver, created=created)  # tasks only for what a failed probe did not read
    timings["probe_s"] = time.monotonic() - t0
    probed = [ProbedVideo(v.video, v.path, infos[v.video]) for v in videos if v.video in infos]
    if drop_misread_videos(sink, {p.video for p in probed if p.info.remuxed}):  # rows of an earlier version
        committed = sink.committed_ranges()
    if config.detector.int8:
        job["int8_calibration"] = _start_int8(ray, probed, config, pool, factory, input_size=weights.spec.input_size)
    per_frame = pictures_per_frame(probed, config.detector, input_size=weights.spec.input_size)  # tiles: > 1
    shards = plan_shards(
        probed, config.sampling, committed=committed,
        **shard_sizes(config.sampling, shard_frames=max(1, config.planning.shard_frames // per_frame),
                      pack_frames=config.planning.pack_frames // per_frame),
    )
    tuner = JobTuner(sizing, config, _planned_costs(shards, probed, config))
    if (resized := tuner.update(ray.cluster_resources())) is not None:
        sizing = resized
    on_plan(sum(s.num_frames for s in shards))
    logger.info(
        "%d videos, %d shards to run (%d probe failures); %s",
        len(videos), len(shards), len(failures), sizing,
    )

    batch_size = config.detector.batch_size
    if batch_size is None:  # on GPU the actor sizes batches to its card; CPUs gain nothing past 16
        batch_size = ray.get(pool.actors[0].batch_size.remote()) if factory.use_gpu and shards else 16
        batch_size = max(1, batch_size // per_frame) if factory.use_gpu else batch_size
    t0 = time.monotonic()
    scheduler = Scheduler(
        shards, max_retries=config.planning.max_retries, shard_timeout_s=config.planning.shard_timeout_s,
        max_decoders=sizing.decoders,
    )
    damaged: dict[str, dict[str, Any]] = {}  # video -> its first damage note (decoding stopped there)

    def on_damage(notes: list[dict[str, Any]]) -> None:
        for note in notes:
            if note["video"] not in damaged or note["frame"] < damaged[note["video"]]["frame"]:
                damaged[note["video"]] = note

    online = OnlineTracks.for_shards(shards, dataclasses.asdict(config.tracking))  # tracked as shards commit
    decoders = _Decoders(functools.partial(_decode_task, ray, config, batch_size=batch_size,
                                           input_size=weights.spec.input_size), sizing.decode_cpus)
    loop = _ShardLoop(
        ray=ray, scheduler=scheduler, pool=pool,
        start_decode=decoders,
        commit=functools.partial(commit_shard, sink, class_names=weights.spec.class_names, inputs=identities),
        on_frames=on_frames, on_damage=on_damage, on_committed=online.add,
        on_batch=functools.partial(_observe, tuner),
        on_tick=functools.partial(_retune, ray, tuner, scheduler, decoders, pool, t0),
    )
    try:
        loop.run()
        if config.detector.int8:
            job["detector_backend"], job["int8_frames"] = _int8_record(ray, pool.actors)
        timings["run_s"] = time.monotonic() - t0
        asked = _ask_placement(pool.actors)  # answered while the tracks are made
        failures.update({k: v for k, v in scheduler.failures.items() if k not in failures})

        t0 = time.monotonic()
        # the idle actors render too: their processes and CPUs are already there
        people = finish_tracks(ray, sink, probed, failures, config, helpers=pool.actors, meta=meta, online=online)
        timings["tracks_s"] = time.monotonic() - t0
        job["tracked_during_run"] = len(online.used)  # the other videos were tracked after the run
        job["placement"] = _placement(ray, loop.placed, asked)
    finally:
        online.close()
        pool.close()
        if any(p.info.copied for p in probed) or any(is_remote(v.path) or remux_kind(v.path) for v in videos):
            # the staged copies of remote videos and the Matroska copies of MPEG streams, AVIs and
            # MP4s whose edit list hides frames, on every node
            freed = on_every_node(ray, clear_stage)
            logger.info("stage caches cleared: %d bytes on %d nodes", sum(freed.values()), len(freed))
    rows = _video_rows(videos, infos, failures, sink.frame_totals(), people, config, damaged=damaged,
                       identities=identities)
    sizes = [(p.video, p.info.width, p.info.height) for p in probed]
    rows = add_coverage(rows, video_coverage(sink, sizes, config.detector, input_size=weights.spec.input_size))
    # an ``absent`` video (rows from an earlier run, not an input now) has no metadata this run
    rows = [{**r, **video_meta_columns(meta[r["video"]], r.get("duration_s"))} if r["video"] in meta else r
            for r in rows]
    if config.zones.file:
        t0 = time.monotonic()
        try:
            job["zones"] = compute_zones(sink, Path(config.zones.file), videos=rows)
        except InputError as exc:  # an earlier aggregate run removed the boxes: its zones stay
            if config.privacy.mode != AGGREGATE:
                raise
            logger.warning("zones not recomputed: %s", exc)
            job["zones"] = {"file": config.zones.file, "kept": "computed by the run that removed the boxes"}
        timings["zones_s"] = time.monotonic() - t0
    if config.privacy.mode == AGGREGATE:
        strip_boxes(sink)
    statuses = {r["status"] for r in rows}
    job.update(
        status="failed" if "failed" in statuses else "partial" if "partial" in statuses else "done",
        finished=datetime.now(timezone.utc).isoformat(),
        fingerprint=config.result_fingerprint(weights.sha256),
        sizing={"detector_workers": sizing.detector_workers, "detector_threads": sizing.detector_threads,
                "detector_cpus": sizing.detector_cpus, "decoders": sizing.decoders,
                "decode_cpus": sizing.decode_cpus, "batch_size": batch_size,
                "resized": tuner.changes, "costs_ms": _costs_ms(tuner)},
        timings={k: round(v, 3) for k, v in timings.items()},
    )
    sink.commit(rows, job)
    return JobResult(rows)


def _damage_cause(damage: dict[str, Any]) -> str:
    """A damage note's cause, without the "decoding failed at frame N (...)" that repeats its frame."""
    head, text = f"decoding failed at frame {damage['frame']} (", damage["error"]
    return text[len(head):-1] if text.startswith(head) and text.endswith(")") else text


def _planned_costs(shards: list[Shard], probed: list[ProbedVideo], config: JobConfig) -> WorkCosts:
    """The plan's :class:`WorkCosts` estimate: its sampled frames, the source frames decoding
    them takes, and the videos' sizes."""
    keys = {p.video: p.info.keyframes for p in probed}
    pixels = {p.video: p.info.width * p.info.height for p in probed}
    kept = decoded = seeks = 0
    area = 0.0
    for shard in shards:
        d, s = decoded_frames(shard, keys, seek_each=config.sampling.keyframes)
        decoded, seeks, kept = decoded + d, seeks + s, kept + shard.num_frames
        area += sum(len(seg.frames) * pixels.get(seg.video, 0) for seg in shard.segments)
    if not kept:
        return prior_costs(config)
    return plan_costs(kept=kept, decoded=decoded, seeks=seeks, megapixels=area / kept / 1e6)


@dataclass
class _Decoders:
    """Starts decode tasks (``shard -> ObjectRefGenerator``) reserving ``num_cpus`` each; the
    driver changes ``num_cpus`` as it re-sizes the job (one task template per value)."""

    make: Callable[..., Callable[[Shard], Any]]  # _decode_task with all but num_cpus bound
    num_cpus: float
    _started: dict[float, Callable[[Shard], Any]] = field(default_factory=dict)

    def __call__(self, shard: Shard) -> Any:
        start = self._started.get(self.num_cpus)
        if start is None:
            start = self._started[self.num_cpus] = self.make(num_cpus=self.num_cpus)
        return start(shard)


def _observe(tuner: JobTuner, out: DetectedBatch) -> None:
    """Feeds a batch's measured costs (when its actor and decoder measured them) to the tuner."""
    if "decode_cpu_s" in out and "detect_cpu_s" in out:
        tuner.observe(len(out["frame"]), float(out["decode_cpu_s"].sum()), float(out["detect_cpu_s"].sum()))


def _retune(ray: Any, tuner: JobTuner, scheduler: Scheduler, decoders: _Decoders, pool: ActorPool, t0: float) -> None:
    """Applies the tuner's new sizing, when it has one (every few seconds): the decoder count
    and reservation, and detector actors added to the pool."""
    now = time.monotonic()
    if not tuner.due(now):
        return
    new = tuner.update(ray.cluster_resources(), at_s=now - t0)
    if new is not None:
        scheduler.max_decoders = new.decoders
        decoders.num_cpus = new.decode_cpus
        pool.grow(new.detector_workers)


def _costs_ms(tuner: JobTuner) -> dict[str, float]:
    """job.json: the per-frame costs the job was sized by at its end, in CPU milliseconds."""
    costs = tuner.costs()
    return {"decode": round(costs.decode_s * 1e3, 3), "detect": round(costs.detect_s * 1e3, 3),
            "measured_frames": tuner.measured.frames}


def _ask_placement(actors: list[Any]) -> list[Any]:
    """Asks each of the detector ``actors`` where it runs (refs to :class:`Started`), for
    :func:`_placement`."""
    return [actor.where.remote() for actor in actors]


def _placement(ray: Any, placed: dict[str, Any], probes: list[Any]) -> dict[str, dict[str, Any]]:
    """job.json's ``placement``: ``{node id: {"host": name, "shards": [shard ids], "detectors": n}}``:
    where the committed attempt of each shard this run decoded ran, and where the detector
    actors alive at the end of the run (``probes``: :func:`_ask_placement`'s) run."""
    out: dict[str, dict[str, Any]] = {}

    def entry(at: Started) -> dict[str, Any]:
        return out.setdefault(at.node, {"host": at.host, "shards": [], "detectors": 0})

    for shard_id, marker in placed.items():
        try:
            entry(ray.get(marker, timeout=10))["shards"].append(shard_id)
        except Exception as exc:  # a Ray error: the marker is lost with its node; the rows are committed
            logger.debug("shard %s: where it ran is unknown (%s)", shard_id, one_line(exc))
    for probe in probes:
        try:
            entry(ray.get(probe, timeout=10))["detectors"] += 1
        except Exception as exc:  # a Ray error: that actor died at the end; its node is not recorded
            logger.debug("a detector actor's node is unknown (%s)", one_line(exc))
    for item in out.values():
        item["shards"].sort()
    return out


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
    people: dict[str, dict[str, int]],
    config: JobConfig,
    *,
    damaged: dict[str, dict[str, Any]] | None = None,
    identities: dict[str, dict[str, Any] | None] | None = None,
) -> list[dict[str, Any]]:
    """``videos.parquet`` rows: each video's status and error, probe facts, committed totals
    (``totals``, from the sink) and tracked people (``people``, from the tracks pass).

    Status: ``done``; ``partial`` when its video stopped decoding part-way (``damaged``: the
    frames before it are committed, ``damaged_frame`` says where); ``failed``; and ``absent``
    for a video with committed rows that is not among this run's inputs (its rows are kept).
    """
    damaged, identities = damaged or {}, identities or {}
    rows = []
    for v in videos:
        info = infos.get(v.video)
        t = totals.get(v.video, {"frames": 0, "faces": 0, "masked": 0, "unmasked": 0})
        error = failures.get(v.video)
        damage = damaged.get(v.video) if error is None else None
        sampled = len(sample_frames(info, config.sampling)) if info is not None else 0
        if damage is not None and info is not None and t["frames"] < sampled:
            error = (f"decoding stopped at frame {damage['frame']} ({_damage_cause(damage)}); "
                     f"{t['frames']} of {sampled} sampled frames kept")
        elif error is None and info is not None and t["frames"] != sampled:
            error = f"{t['frames']} of {sampled} sampled frames committed"
            damage = None
        else:
            damage = None
        identity = identities.get(v.video) or {}
        rows.append(
            {
                "video": v.video,
                "path": escape_name(display_location(v.path)),  # text; a URI without its credentials
                "status": "partial" if damage is not None else "failed" if error else "done",
                "error": error,
                "frames_total": info.frames_total if info else None,
                "frames_processed": t["frames"],
                "sampling_rate": _sampling_rate(t["frames"], info),
                "fps": info.fps if info else None,
                "duration_s": info.duration_s if info else None,
                "width": info.width if info else None,
                "height": info.height if info else None,
                "faces": t["faces"],
                "masked": t["masked"],
                "unmasked": t["unmasked"],
                "compliance": (t["masked"] / t["faces"]) if t["faces"] else None,
                **people.get(v.video, {"people": 0, "people_unmasked": 0}),
                "damaged_frame": damage["frame"] if damage is not None else None,
                "size_bytes": identity.get("size"),
                "mtime_ns": identity.get("mtime_ns"),
                "content_hash": identity.get("content_hash"),
            }
        )
    given = {v.video for v in videos}
    for video in sorted(set(totals) - given):  # committed by an earlier run over other inputs
        t = totals[video]
        rows.append(
            {
                "video": video, "path": None, "status": "absent",
                "error": f"not among this run's inputs; its {t['frames']} committed frames are kept",
                "frames_processed": t["frames"], "faces": t["faces"], "masked": t["masked"],
                "unmasked": t["unmasked"], "compliance": (t["masked"] / t["faces"]) if t["faces"] else None,
                **people.get(video, {"people": 0, "people_unmasked": 0}),
            }
        )
    return rows


def _sampling_rate(frames: int, info: VideoInfo | None) -> float | None:
    """videos.parquet's ``sampling_rate``: the frames analysed per second of video (its
    effective sampling rate: 2.0 for ``--fps 2``; with ``--keyframes`` what the GOPs give)."""
    if info is None or not info.duration_s or info.duration_s <= 0:
        return None
    return frames / info.duration_s


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
        "privacy": config.privacy.mode,
        "host": os.uname().nodename,
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("maskjobs")
    except PackageNotFoundError:
        return "unknown"
