"""The driver's pass after every shard is committed: tracks, thumbnails, annotated videos.

Per video, its committed detections are read back from the frames dataset (they are small)
and tracked in frame order over all its sampled frames, so tracks continue across shard
boundaries by construction (the run's own tracker, fed as shards commit, gives those ids
where it saw exactly these rows: :mod:`jobs.pipeline.tracking`). The track ids are then written into each committed shard file
(atomically, and only where they changed), ``tracks.parquet`` is rewritten whole, and
the source frames needed for thumbnails and ``--annotate`` are decoded in Ray tasks.

Every run recomputes all of it from the committed rows, so a rerun (after a crash, or
with new frames committed) leaves the same output a single run would have; thumbnails and
annotated videos whose inputs did not change are kept, not decoded again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from detector.spec import MASK, NO_MASK
from jobs import faults
from jobs.config import JobConfig, SamplingConfig
from jobs.errors import one_line
from jobs.video import VideoInfo, keyframe_before
from jobs.metadata import VideoMeta, default_camera
from jobs.results.manifest import MANIFEST, read_manifest
from jobs.results.privacy import AGGREGATE
from jobs.results.render import VideoDetections, render_video
from sinks.atomic import atomic_output, sweep
from sinks.store import OutputStore
from sinks.schema import FRAMES_SCHEMA, TRACKS_SCHEMA, with_tracks, with_video_meta
from jobs.results.bytetrack import track_sequence


class RunTracks(Protocol):
    """The run's own trackers (:class:`jobs.pipeline.tracking.OnlineTracks`)."""

    def ids(self, video: str, dets: VideoDetections) -> np.ndarray | None:
        """``video``'s track ids for exactly ``dets``' rows, or None."""


logger = logging.getLogger(__name__)



def sampled_rate(info: VideoInfo, sampling: SamplingConfig) -> float:
    """Sampled frames per second of video (the annotated video's frame rate)."""
    fps = info.fps if info.fps > 0 else 25.0
    if sampling.fps is not None:
        return min(sampling.fps, fps)
    return fps / sampling.stride


def _read_video(sink: OutputStore, parts: list[str], video: str) -> VideoDetections:
    """One video's committed rows, in frame order, flattened (``tracks``: the ids written last,
    -1 where none; boxes NaN where an aggregate-privacy run removed them)."""
    columns = ["video", "frame", "time_s", "detections"]
    table = pa.concat_tables(
        [sink.read_part(p).select(columns).filter(pc.field("video") == video) for p in parts]
    ).sort_by("frame")
    dets = table.column("detections").combine_chunks()
    flat = dets.flatten()
    return VideoDetections(
        frames=table.column("frame").to_numpy(),
        time_s=table.column("time_s").to_numpy(),
        counts=pc.list_value_length(dets).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64),
        boxes=np.stack([flat.field(k).to_numpy(zero_copy_only=False) for k in ("x1", "y1", "x2", "y2")], axis=1)
        .astype(np.float64).reshape(-1, 4),
        masked=pc.equal(flat.field("label"), MASK).to_numpy(zero_copy_only=False).astype(bool),
        scores=flat.field("score").to_numpy(zero_copy_only=False).astype(np.float64),
        tracks=flat.field("track").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64),
    )


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])``, vectorised."""
    lengths = np.asarray(lengths, np.int64)
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, np.int64) - before, lengths) + np.arange(int(lengths.sum()))


BEST_SCORE_SLACK = 0.01
SUMMARY_COLUMNS = [f.name for f in TRACKS_SCHEMA][: TRACKS_SCHEMA.get_field_index("thumbnail")]


def summarise_tracks(
    video: str, dets: VideoDetections, keyframes: Sequence[int] = (), *, slack: float = BEST_SCORE_SLACK
) -> pd.DataFrame:
    """One row per track (TRACKS_SCHEMA columns but ``thumbnail``).

    ``label`` is the majority label of its detections (a tie counts as NoMask). The best
    frame is that of a detection with that label scoring within ``slack`` of the track's
    best: of those, the one fewest frames after a keyframe (its thumbnail decodes from
    there, ~30x less decoding than an arbitrary frame of a 2-second GOP), then the highest
    score, then the earliest. Without ``keyframes`` it is the highest-scoring one.
    """
    frame_of = np.repeat(np.arange(len(dets.counts)), dets.counts)
    df = pd.DataFrame(
        {
            "track": dets.tracks, "frame": dets.frames[frame_of], "time_s": dets.time_s[frame_of],
            "masked": dets.masked, "score": dets.scores, "x1": dets.boxes[:, 0], "y1": dets.boxes[:, 1],
            "x2": dets.boxes[:, 2], "y2": dets.boxes[:, 3],
        }
    )
    df = df[df.track >= 0]
    if df.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    g = df.groupby("track", sort=True)
    out = g.agg(first_s=("time_s", "min"), last_s=("time_s", "max"), frames=("frame", "nunique"),
                masked_share=("masked", "mean"))
    out["label"] = np.where(out.masked_share > 0.5, MASK, NO_MASK)
    df = df.join(out["label"], on="track")
    same = df[df.masked == (df.label == MASK)]
    top = same.groupby("track")["score"].transform("max")
    same = same[same.score >= top - slack].copy()
    keys = np.asarray(keyframes, np.int64)
    frames = same.frame.to_numpy(np.int64)
    before = keyframe_before(keys, frames) if len(keys) else frames
    same["decode"] = np.where(before <= frames, frames - before, frames)
    order = same.sort_values(["decode", "score", "frame"], ascending=[True, False, True])
    best = same.loc[order.groupby("track").head(1).index]
    best = best.set_index("track")[["frame", "time_s", "score", "x1", "y1", "x2", "y2"]]
    out = out.join(best.rename(columns={"frame": "best_frame", "time_s": "best_time_s"})).reset_index()
    out.insert(0, "video", video)
    return out[SUMMARY_COLUMNS]


def _digest(dets: VideoDetections, *extra: Any) -> str:
    h = hashlib.sha256()
    for arr in dataclasses.astuple(dets):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(json.dumps(extra, default=str).encode())
    return h.hexdigest()[:24]


def _old_thumbnails(sink: OutputStore) -> dict[tuple[Any, ...], bytes]:
    """Thumbnails of the previous run, keyed by what they show."""
    table = sink.read_tracks()
    if table is None:
        return {}
    if "thumbnail_privacy" not in table.column_names:  # written before privacy modes: raw faces
        table = table.append_column("thumbnail_privacy", pa.array(["raw"] * len(table), pa.string()))
    return {
        (r["video"], r["best_frame"], r["x1"], r["y1"], r["x2"], r["y2"], r["thumbnail_privacy"]): r["thumbnail"]
        for r in table.to_pylist()
        if r["thumbnail"] is not None
    }


def _thumb_key(video: str, row: Any, privacy: str | None) -> tuple[Any, ...]:
    box = (float(np.float32(getattr(row, k))) for k in ("x1", "y1", "x2", "y2"))
    return (video, int(row.best_frame), *box, privacy)


class _Manifest:
    """``annotated/manifest.json``: which annotated video was drawn from which rows."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / MANIFEST
        self.entries: dict[str, dict[str, Any]] = read_manifest(folder, set_aside=True)

    def current(self, video: str, digest: str, folder: Path) -> bool:
        entry = self.entries.get(video)
        return entry is not None and entry["digest"] == digest and (folder / entry["file"]).is_file()

    def save(self) -> None:
        with atomic_output(self.path) as tmp:
            tmp.write_text(json.dumps(self.entries, indent=2, sort_keys=True))


def _write_track_ids(
    sink: OutputStore, parts: list[str], tracked: dict[str, VideoDetections], meta: dict[str, VideoMeta]
) -> int:
    """Writes each detection's track id, and each row's camera and timestamp (``meta``), into
    the committed shard files where they changed; returns how many files were rewritten."""
    cameras = {v: m.camera for v, m in meta.items()}
    starts = {v: m.start_us for v, m in meta.items()}
    rewritten = 0
    for path in parts:
        table = sink.read_part(path)
        videos = table.column("video").to_numpy(zero_copy_only=False)
        frames = table.column("frame").to_numpy()
        counts = pc.list_value_length(table.column("detections")).fill_null(0).to_numpy(zero_copy_only=False)
        row_start = np.cumsum(counts) - counts
        ids = np.full(int(counts.sum()), -1, np.int64)
        for video in np.unique(videos):
            dets = tracked[video]
            rows = np.flatnonzero(videos == video)
            pos = np.searchsorted(dets.frames, frames[rows])
            src = _ranges(dets.offsets[pos], dets.counts[pos])
            ids[_ranges(row_start[rows], counts[rows])] = dets.tracks[src]
        new = with_video_meta(with_tracks(table, ids), cameras, starts)
        if table.schema == FRAMES_SCHEMA and new.equals(table):  # else: written by an older version
            continue
        sink.replace_part(path, new)
        rewritten += 1
    return rewritten


def _track_videos(
    sink: OutputStore, segments: list[tuple[Path, list[tuple[str, int, int]]]], config: JobConfig,
    online: RunTracks | None = None,
) -> tuple[dict[str, VideoDetections], set[str]]:
    """Every video with committed rows, read back and tracked over all its sampled frames
    (by the run's tracker, ``online``, where it saw exactly these rows), and the videos the
    tracker failed on (their detections without a track: -1)."""
    parts_of: dict[str, list[Path]] = {}
    for path, segs in segments:
        for video in dict.fromkeys(s[0] for s in segs):
            parts_of.setdefault(video, []).append(path)
    params = dataclasses.asdict(config.tracking)
    tracked, during_run, untracked = {}, 0, set()
    for video, parts in parts_of.items():
        dets = _read_video(sink, parts, video)
        if np.isnan(dets.boxes).any():  # an aggregate-privacy run removed its boxes: keep the ids it wrote
            tracked[video] = dets
            continue
        try:
            faults.in_tracking(video)  # test-only: a tracker error, when $MASKJOBS_TEST_FAULT asks
            ids = online.ids(video, dets) if online is not None else None
            if ids is None:
                ids = track_sequence(dets.counts, dets.boxes, dets.scores, **params)
            else:
                during_run += 1
        except Exception as exc:  # a bug met on this video's rows: it has no tracks, the others go on
            logger.error("%s: not tracked (%s: %s); its rows are kept without track ids", video,
                         type(exc).__name__, one_line(exc, limit=300))
            ids = np.full(len(dets.scores), -1, np.int64)
            untracked.add(video)
        tracked[video] = dataclasses.replace(dets, tracks=ids)
    logger.info("tracked %d videos, %d of them during the run", len(tracked), during_run)
    return tracked, untracked


def _gops(frames: np.ndarray, keyframes: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ascending wanted ``frames`` grouped by GOP: ``(keyframe, index of its first wanted frame,
    frames decoded to read its wanted ones)`` per GOP touched (without ``keyframes``, each frame
    is its own GOP of one)."""
    keys = np.asarray(keyframes, np.int64)
    starts = keyframe_before(keys, frames) if len(keys) else frames
    gop_keys, first = np.unique(starts, return_index=True)
    last = np.append(first[1:], len(frames)) - 1
    return gop_keys, first, frames[last] - np.minimum(gop_keys, frames[first]) + 1


def decode_cost(wanted: dict[int, tuple[int, np.ndarray]], keyframes: Sequence[int] = ()) -> int:
    """Frames decoded to read the frames of ``wanted`` (``{track: (frame, box)}``) forward, GOP by GOP."""
    frames = np.array(sorted({f for f, _ in wanted.values()}), np.int64)
    return int(_gops(frames, keyframes)[2].sum()) if len(frames) else 0


def split_by_frame(
    wanted: dict[int, tuple[int, np.ndarray]], parts: int, keyframes: Sequence[int] = ()
) -> list[dict[int, tuple[int, np.ndarray]]]:
    """``wanted`` ``{track: (frame, box)}`` cut into at most ``parts`` pieces of contiguous
    frames, at least 4 frames each, that cost about the same to decode.

    Each piece reads its own stretch of the video forward: every GOP it touches from the
    keyframe to the last wanted frame in it (:func:`jobs.video.read_frames`). A GOP is never
    split between pieces. Without ``keyframes`` every frame counts as one.
    """
    frames = np.array(sorted({f for f, _ in wanted.values()}), np.int64)
    parts = max(1, min(parts, len(frames) // 4))
    if parts == 1:
        return [dict(wanted)]
    gop_keys, first, gop_cost = _gops(frames, keyframes)
    cost = np.cumsum(gop_cost)
    targets = cost[-1] * np.arange(1, parts) / parts
    ends = np.searchsorted(cost, targets)  # a piece's last GOP: where the running cost is nearest its share
    earlier = np.maximum(ends - 1, 0)
    ends = np.unique(np.where((ends > 0) & (targets - cost[earlier] < cost[ends] - targets), earlier, ends))
    bounds = frames[first[ends[ends + 1 < len(first)] + 1]]  # each later piece's first frame
    out: list[dict[int, tuple[int, np.ndarray]]] = [{} for _ in range(len(bounds) + 1)]
    for track, (frame, box) in wanted.items():
        out[int(np.searchsorted(bounds, frame, side="right"))][track] = (frame, box)
    return out


def _render(
    ray: Any,
    sink: OutputStore,
    todo: list[tuple[str, str, VideoInfo]],
    tracked: dict[str, VideoDetections],
    summaries: dict[str, pd.DataFrame],
    config: JobConfig,
    helpers: Sequence[Any] = (),
) -> dict[str, dict[int, bytes]]:
    """Thumbnails per track (kept from the last run where they show the same face), and the
    annotated videos whose rows changed, in Ray tasks. Returns ``{video: {track: JPEG}}``.

    ``helpers``: actors with a ``render`` method (:meth:`jobs.pipeline.actor.DetectorActor.render`)
    that take their turn with the tasks (pieces queue on them); a piece whose actor died is
    run again as a task, and so is every piece queued behind it.
    """
    old_thumbs = _old_thumbnails(sink)
    privacy = config.privacy.mode
    a = config.annotate
    manifest = _Manifest(sink.annotated_dir) if sink.annotated_dir is not None else None
    if a.enabled and sink.annotated_dir.is_dir():  # type: ignore[union-attr]  (run_job checked it)
        sweep(sink.annotated_dir, recursive=True)  # left by a killed run
    remote = ray.remote(num_cpus=1, max_retries=0, num_returns="streaming")(render_video)
    pieces: list[_Piece] = []
    thumbs: dict[str, dict[int, bytes]] = {}
    steps = []  # per video: what to render
    for video, path, info in todo:
        dets, thumbs[video], wanted = tracked[video], {}, {}
        for row in summaries[video].itertuples():
            if row.label == MASK:  # the report shows the unmasked; a thumbnail costs a seek
                continue
            if privacy == AGGREGATE or not np.isfinite([row.x1, row.y1, row.x2, row.y2]).all():
                continue  # no pictures at all, or the boxes are gone (an earlier aggregate run)
            key = _thumb_key(video, row, privacy)
            if key in old_thumbs:
                thumbs[video][int(row.track)] = old_thumbs[key]
            else:
                wanted[int(row.track)] = (int(row.best_frame), np.array([row.x1, row.y1, row.x2, row.y2]))
        rate = sampled_rate(info, config.sampling)
        digest = _digest(dets, rate, a.crf, a.preset, privacy)
        annotate_to = None
        if a.enabled and np.isnan(dets.boxes).any():
            logger.warning("%s: not annotated: an earlier privacy-aggregate run removed its boxes", video)
        elif a.enabled and not manifest.current(video, digest, sink.annotated_dir):  # type: ignore[union-attr]
            annotate_to = str(sink.annotated_dir / f"{video}.mp4")
        steps.append((video, path, info, dets, wanted, rate, digest, annotate_to))
    # Thumbnails are split into pieces of about the same decoding (frames x pixels), about two
    # per CPU over the whole job: a long 1080p video gets more pieces than a short 720p one, so
    # no CPU waits on one video's single piece while the others are done.
    # The idle actors take their turn with the tasks (one piece in every ``slots`` per actor, queued
    # on it), so they share the work with the CPUs they leave rather than each doing one piece.
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    costs = [decode_cost(st[4], st[2].keyframes) * st[2].width * st[2].height for st in steps]
    share, slots = 2 * cpus / max(1, sum(costs)), max(cpus, len(helpers))
    for (video, path, info, dets, wanted, rate, digest, annotate_to), cost in zip(steps, costs):
        parts = 1 if annotate_to is not None else max(1, round(cost * share))
        for i, part in enumerate(split_by_frame(wanted, parts, info.keyframes)):
            if part or (i == 0 and annotate_to):
                annotate = annotate_to if i == 0 else None
                task = functools.partial(remote.remote, path, dets, part, annotate, rate=rate, width=info.width,
                                         height=info.height, crf=a.crf, preset=a.preset, privacy=privacy)
                piece = _Piece(video, annotate, digest, task)
                turn = len(pieces) % slots
                if turn < len(helpers):  # the task stays as the fallback should the actor die
                    piece.actor = helpers[turn]
                    piece.gen = piece.actor.render.options(num_returns="streaming").remote(*task.args, **task.keywords)
                else:
                    piece.gen = task()
                pieces.append(piece)
    for piece in _wait_pieces(ray, pieces, timeout_s=config.planning.shard_timeout_s):
        if piece.error is not None:
            logger.warning("%s: thumbnails/annotated video failed (%s)", piece.video, piece.error)
            continue
        thumbs[piece.video].update(piece.result)
        if piece.annotate_to is not None:
            manifest.entries[piece.video] = {
                "file": f"{piece.video}.mp4", "digest": piece.digest, "frames": len(tracked[piece.video].frames),
            }
    if a.enabled:
        manifest.save()
    return thumbs


@dataclasses.dataclass(eq=False)
class _Piece:
    """One render step (thumbnails of some of a video's tracks, and maybe its annotated
    video) running as a streaming generator on a helper actor or in a task (``task``)."""

    video: str
    annotate_to: str | None
    digest: str
    task: Callable[[], Any]  # starts it as a task (the fallback when its actor dies)
    actor: Any = None
    gen: Any = None
    started: float | None = None  # when it started running; its last progress after
    result: dict[int, bytes] = dataclasses.field(default_factory=dict)
    error: str | None = None


def _wait_pieces(ray: Any, pieces: list[_Piece], *, timeout_s: float, poll_s: float = 1.0) -> list[_Piece]:
    """Runs ``pieces`` to the end: each yields a first item once it runs, counts as it
    works, then its result. One that reports nothing for ``timeout_s`` once running is
    stuck: stopped (its task cancelled, or its actor killed) and failed; one whose actor
    died runs again as a task. A failure is its own video's only. Returns ``pieces``."""
    pending = list(pieces)
    while pending:
        gens = [p.gen for p in pending]
        ray.wait(gens, num_returns=1, timeout=poll_s, fetch_local=False)
        ready = set(ray.wait(gens, num_returns=len(gens), timeout=0, fetch_local=False)[0])
        now = time.monotonic()
        for piece in list(pending):
            if piece.gen in ready:
                try:
                    value = ray.get(next(piece.gen))
                except StopIteration:
                    value = RuntimeError("the render step returned nothing")
                except ray.exceptions.RayActorError as exc:
                    if piece.actor is not None:
                        logger.info("%s: the actor rendering it died; rendering in a task instead", piece.video)
                        piece.actor, piece.gen, piece.started = None, piece.task(), None
                        continue
                    value = exc
                except Exception as exc:  # a Ray error: the render step failed
                    value = exc
                if isinstance(value, dict):
                    piece.result = value
                elif not isinstance(value, BaseException):
                    piece.started = now  # STARTED, or a count: progress
                    continue
                else:
                    piece.error = one_line(value, limit=300)
            elif piece.started is not None and now - piece.started > timeout_s:
                if piece.actor is not None:
                    ray.kill(piece.actor)  # an actor's call cannot be cancelled by force
                else:
                    ray.cancel(piece.gen, force=True)
                piece.error = f"no progress for {timeout_s:g} s (stuck decoding or encoding)"
            else:
                continue
            pending.remove(piece)
    return pieces


def _track_rows(summary: pd.DataFrame, thumbs: dict[int, bytes], meta: VideoMeta, privacy: str) -> pd.DataFrame:
    """``summary`` (one video's :func:`summarise_tracks`) with its thumbnails, camera and
    wall-clock times; with ``privacy`` aggregate, without boxes or pictures."""
    def when(seconds: pd.Series) -> pd.Series:
        """``start + seconds`` in whole microseconds, as the frames' timestamps are."""
        if meta.start_us is None:
            return pd.Series(pd.NaT, index=seconds.index, dtype="datetime64[us, UTC]")
        return pd.to_datetime(meta.start_us + np.round(seconds.to_numpy(np.float64) * 1e6), unit="us", utc=True)

    out = summary.assign(
        thumbnail=[thumbs.get(int(t)) for t in summary.track], camera=meta.camera, first_time=when(summary.first_s),
        last_time=when(summary.last_s),
    )
    out["thumbnail_privacy"] = np.where(out.thumbnail.notna(), privacy, None)
    if privacy == AGGREGATE:
        out[["x1", "y1", "x2", "y2"]] = np.nan
    return out


def finish_tracks(
    ray: Any,
    sink: OutputStore,
    probed: list[tuple[str, str, VideoInfo]],
    failed: Collection[str],
    config: JobConfig,
    helpers: Sequence[Any] = (),
    meta: dict[str, VideoMeta] | None = None,
    online: RunTracks | None = None,
) -> dict[str, dict[str, int]]:
    """Tracks every video with committed rows, writes the ids and ``tracks.parquet``, renders
    thumbnails (and annotated videos for ``config.annotate.enabled``) of videos not in ``failed``
    (``helpers``: idle actors that render too, see :func:`_render`). ``meta`` gives each
    video's camera and start (default: its folder, unknown start). ``online``: the run's
    trackers (:mod:`jobs.pipeline.tracking`), whose ids are taken where they are valid.

    Returns ``{video: {"people": n, "people_unmasked": m}}`` (None where the tracker failed on
    the video: its rows stay, without track ids, and the other videos are tracked).
    """
    t0 = time.monotonic()
    segments = sink.part_segments()
    tracked, untracked = _track_videos(sink, segments, config, online)
    keyframes = {video: info.keyframes for video, _, info in probed}
    summaries = {video: summarise_tracks(video, dets, keyframes.get(video, ())) for video, dets in tracked.items()}
    paths = {video: path for video, path, _ in probed}
    meta = {v: (meta or {}).get(v) or VideoMeta(default_camera(v, paths.get(v))) for v in tracked}
    rewritten = _write_track_ids(sink, [p for p, _ in segments], tracked, meta)
    logger.info("tracked %d videos, %d shard files updated", len(tracked), rewritten)

    todo = [(v, path, info) for v, path, info in probed if v not in failed and v in tracked]
    thumbs = _render(ray, sink, todo, tracked, summaries, config, helpers)
    frames = [_track_rows(s, thumbs.get(v, {}), meta[v], config.privacy.mode) for v, s in summaries.items() if len(s)]
    table = (
        pa.Table.from_pandas(pd.concat(frames, ignore_index=True), schema=TRACKS_SCHEMA, preserve_index=False)
        if frames else TRACKS_SCHEMA.empty_table()
    )
    sink.write_tracks(table)
    logger.info("tracks, thumbnails and annotations in %.1f s", time.monotonic() - t0)
    return {
        v: {"people": len(s), "people_unmasked": int((s.label != MASK).sum()) if len(s) else 0}
        if v not in untracked else {"people": None, "people_unmasked": None}  # not known
        for v, s in summaries.items()
    }
