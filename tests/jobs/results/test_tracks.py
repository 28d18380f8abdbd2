"""Tracking in ``maskjobs run``: real videos of people on known paths, real Ray and Parquet."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from jobs.cli.main import app
from sinks.schema import FRAMES_SCHEMA, TRACKS_SCHEMA, VIDEOS_SCHEMA
from tests.jobs.conftest import WALK_CONFIG, WalkSet


def _detections(frames: pd.DataFrame) -> pd.DataFrame:
    """One row per detection: video, frame, label, score, x1..y2, track."""
    rows = frames.explode("detections").dropna(subset=["detections"]).reset_index(drop=True)
    dets = pd.DataFrame(rows["detections"].tolist(), index=rows.index)
    return pd.concat([rows[["video", "frame"]], dets], axis=1).reset_index(drop=True)


def _segments(path: Path) -> list[tuple[str, int, int]]:
    return [tuple(s) for s in json.loads(pq.read_schema(path).metadata[b"maskjobs.segments"])]


def _walker_of(walk_set: WalkSet, video: str, frame: int, box: tuple[float, ...]) -> int:
    """Which walker's photo holds the centre of ``box`` in ``frame`` (-1: none)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    scene = walk_set.scenes[video]
    hits = [k for k in range(len(scene.walkers))
            if scene.photo_box(k, frame)[0] <= cx <= scene.photo_box(k, frame)[2]
            and scene.photo_box(k, frame)[1] <= cy <= scene.photo_box(k, frame)[3]]
    return hits[0] if len(hits) == 1 else -1


@pytest.mark.slow  # reads the walkers job's output (a real `maskjobs run`)
def test_one_track_per_person_following_their_paths(walk_set: WalkSet) -> None:
    dets = _detections(pd.read_parquet(walk_set.out / "frames"))
    tracks = pd.read_parquet(walk_set.out / "tracks.parquet")
    for video, scene in walk_set.scenes.items():
        vd = dets[dets.video == video]
        assert len(vd) >= 0.9 * scene.frames * len(scene.walkers)  # the faces are found in most frames
        assert vd.track.notna().mean() > 0.95
        vt = tracks[tracks.video == video]
        assert len(vt) == len(scene.walkers), vt
        walkers = vd.apply(lambda r: _walker_of(walk_set, video, r.frame, (r.x1, r.y1, r.x2, r.y2)), axis=1)
        assert (walkers >= 0).all()
        # each track is one person and each person one track, in every frame
        pairs = pd.DataFrame({"track": vd.track, "walker": walkers}).dropna().drop_duplicates()
        assert len(pairs) == len(scene.walkers) and pairs.track.is_unique and pairs.walker.is_unique
        for row in vt.itertuples():
            walker = int(pairs.loc[pairs.track == row.track, "walker"].iloc[0])
            assert row.label == ("NoMask" if walker in walk_set.unmasked[video] else "Mask")
            assert row.frames == (vd.track == row.track).sum()
            assert _walker_of(walk_set, video, row.best_frame, (row.x1, row.y1, row.x2, row.y2)) == walker


@pytest.mark.slow  # reads the walkers job's output (a real `maskjobs run`)
def test_a_person_crossing_the_frame_is_one_track(walk_set: WalkSet) -> None:
    dets = _detections(pd.read_parquet(walk_set.out / "frames"))
    walk = dets[dets.video == "b_walk.mp4"].sort_values("frame")
    top = walk[walk.y2 < 240]  # the unmasked face on the top row, moving right
    assert top.track.nunique() == 1
    cx = ((top.x1 + top.x2) / 2).to_numpy()
    assert cx[0] < 100 and cx[-1] > 440  # it crossed most of the 640 px frame
    assert top.frame.min() == 0 and top.frame.max() == 119
    tracks = pd.read_parquet(walk_set.out / "tracks.parquet").set_index(["video", "track"])
    row = tracks.loc[("b_walk.mp4", int(top.track.iloc[0]))]
    assert row.first_s == 0 and abs(row.last_s - 119 / 25) < 1e-3 and row.masked_share == 0


@pytest.mark.slow  # reads the walkers job's output (a real `maskjobs run`)
def test_track_ids_are_stable_across_shard_boundaries(walk_set: WalkSet) -> None:
    parts = []
    for path in sorted((walk_set.out / "frames").glob("part-*.parquet")):
        assert pq.read_schema(path).remove_metadata() == FRAMES_SCHEMA
        segments = _segments(path)
        df = _detections(pq.read_table(path).to_pandas())
        for video, first, last in segments:
            if video == "b_walk.mp4":
                parts.append((first, last, df[df.video == video]))
    parts.sort(key=lambda p: p[0])
    assert len(parts) >= 3  # the video was cut into several shards
    assert json.loads((walk_set.out / "job.json").read_text())["tracked_during_run"] == 2  # as its shards committed
    def person_to_track(dets: pd.DataFrame, frame: int) -> dict[int, int]:
        rows = dets[dets.frame == frame]
        return {_walker_of(walk_set, "b_walk.mp4", frame, (r.x1, r.y1, r.x2, r.y2)): int(r.track) for r in rows.itertuples()}

    for (_, last, before), (first, _, after) in zip(parts, parts[1:]):
        assert first == last + 1
        ids_before, ids_after = person_to_track(before, last), person_to_track(after, first)
        assert set(ids_before) == {0, 1} and ids_before == ids_after  # each person keeps their id


@pytest.mark.slow  # reads the walkers job's output (a real `maskjobs run`)
def test_videos_count_people(walk_set: WalkSet) -> None:
    assert pq.read_schema(walk_set.out / "videos.parquet").remove_metadata() == VIDEOS_SCHEMA
    assert pq.read_schema(walk_set.out / "tracks.parquet").remove_metadata() == TRACKS_SCHEMA
    videos = pd.read_parquet(walk_set.out / "videos.parquet").set_index("video")
    for video, scene in walk_set.scenes.items():
        assert videos.loc[video, "people"] == len(scene.walkers)
        assert videos.loc[video, "people_unmasked"] == len(walk_set.unmasked[video])


@pytest.mark.slow  # reruns `maskjobs run` on real videos
def test_rerun_after_a_lost_shard_restores_the_same_tracks(walk_set: WalkSet, caffe_weights: Path, tmp_path: Path) -> None:
    """A shard file lost (as if the job died before committing it): the rerun decodes only it,
    the frames come back exactly once with the same track ids, untouched files are not
    rewritten, and the annotated video is kept (its rows did not change)."""
    out = tmp_path / "job"
    shutil.copytree(walk_set.out, out)
    before_frames = _detections(pd.read_parquet(out / "frames")).sort_values(["video", "frame", "x1"], ignore_index=True)
    before_tracks = pd.read_parquet(out / "tracks.parquet")
    parts = sorted((out / "frames").glob("part-*.parquet"))
    victim = next(p for p in parts if any(v == "b_walk.mp4" and first > 0 for v, first, _ in _segments(p)))
    victim.unlink()
    kept = {p: p.stat().st_mtime_ns for p in parts if p != victim}
    video = out / "annotated" / "b_walk.mp4.mp4"
    video_mtime = video.stat().st_mtime_ns
    cfg = tmp_path / "walk.yaml"
    cfg.write_text(WALK_CONFIG)
    result = CliRunner().invoke(
        app, ["run", str(walk_set.root), "--out", str(out), "--weights", str(caffe_weights), "--config", str(cfg), "--annotate"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "nothing left to process" not in result.stdout
    after_frames = _detections(pd.read_parquet(out / "frames")).sort_values(["video", "frame", "x1"], ignore_index=True)
    pd.testing.assert_frame_equal(after_frames, before_frames)
    # the same tracks as the first run's tracker gave during that run, here tracked after the
    # run from the rows read back (this run saw one shard of them)
    assert json.loads((out / "job.json").read_text())["tracked_during_run"] == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "tracks.parquet"), before_tracks)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert video.stat().st_mtime_ns == video_mtime
    assert np.array_equal(sorted(p.name for p in (out / "frames").glob("part-*")), sorted(p.name for p in parts))


@pytest.mark.slow  # starts Ray and renders from real videos
def test_detector_actors_render_thumbnails_and_a_dead_one_leaves_its_piece_to_a_task(
    walk_set: WalkSet, pth_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The finishing pass on a real Ray: thumbnails rendered in a real detector actor's
    process are the same JPEGs as those of render tasks, and a piece handed to an actor that
    has died is rendered in a task instead."""
    from detector.weights import convert_weights
    from jobs.config import DetectorConfig, RayConfig, resolve_config
    from jobs.pipeline.actor import DetectorActor, WeightsPayload
    from jobs.pipeline.probe import probe_video
    from jobs.pipeline.session import ray_session
    from jobs.results.tracks import _render, _track_videos, summarise_tracks
    from sinks.store import OutputStore

    out = tmp_path / "job"
    shutil.copytree(walk_set.out, out)
    (out / "tracks.parquet").unlink()  # else the old thumbnails are kept, not rendered
    sink, config = OutputStore(out), resolve_config()
    tracked, _ = _track_videos(sink, sink.part_segments(), config)
    todo = [(v, str(walk_set.root / v), probe_video(str(walk_set.root / v))) for v in sorted(tracked)]
    summaries = {v: summarise_tracks(v, tracked[v], info.keyframes) for v, _, info in todo}
    payload = WeightsPayload.from_converted(convert_weights(pth_weights))
    with ray_session(RayConfig(num_cpus=2, object_store_mb=100)) as ray:
        by_tasks = _render(ray, sink, todo, tracked, summaries, config)
        assert sum(len(t) for t in by_tasks.values()) == len(walk_set.unmasked["b_walk.mp4"])

        actor = ray.remote(DetectorActor).options(num_cpus=1).remote(payload, DetectorConfig(), threads=1, use_gpu=False)
        imported = actor.__ray_call__.remote(lambda self: "jobs.results.render" in sys.modules)
        assert ray.get(imported) is False
        assert _render(ray, sink, todo, tracked, summaries, config, [actor]) == by_tasks
        assert ray.get(actor.__ray_call__.remote(lambda self: "jobs.results.render" in sys.modules)) is True

        ray.kill(actor)
        with caplog.at_level(logging.INFO, logger="jobs.results.tracks"):
            assert _render(ray, sink, todo, tracked, summaries, config, [actor]) == by_tasks
        assert "the actor rendering it died; rendering in a task instead" in caplog.text


def test_split_by_frame_keeps_stretches_of_the_video_together() -> None:
    from jobs.results.tracks import split_by_frame

    box = np.zeros(4)
    wanted = {t: (f, box) for t, f in enumerate([900, 10, 15, 400, 410, 20, 905, 420, 910, 30])}
    parts = split_by_frame(wanted, 2)
    assert len(parts) == 2 and sum(len(p) for p in parts) == len(wanted)
    assert max(f for f, _ in parts[0].values()) < min(f for f, _ in parts[1].values())
    assert split_by_frame(wanted, 8) == split_by_frame(wanted, 2)  # at least 4 frames a part: 2 parts
    assert split_by_frame(wanted, 1) == [wanted]
    assert split_by_frame({}, 4) == [{}]


def test_decode_cost_counts_each_gop_from_its_keyframe_to_its_last_wanted_frame() -> None:
    from jobs.results.tracks import decode_cost

    box = np.zeros(4)
    wanted = {0: (5, box), 1: (12, box), 2: (35, box), 3: (31, box)}
    # GOPs at 0, 10, 30: frames 0..5, 10..12, 30..35 are decoded
    assert decode_cost(wanted, [0, 10, 20, 30]) == 6 + 3 + 6
    assert decode_cost(wanted) == 4  # no index: each wanted frame alone
    assert decode_cost({}, [0, 10]) == 0


def test_best_frame_is_a_top_score_that_decodes_fastest() -> None:
    from jobs.results.render import VideoDetections
    from jobs.results.tracks import summarise_tracks

    n = 100
    scores = np.full(n, 0.90)
    scores[37], scores[51], scores[60] = 0.999, 0.992, 0.995
    dets = VideoDetections(
        frames=np.arange(n), time_s=np.arange(n) / 25.0, counts=np.ones(n, np.int64),
        boxes=np.tile([10.0, 10.0, 50.0, 60.0], (n, 1)), masked=np.zeros(n, bool), scores=scores,
        tracks=np.zeros(n, np.int64),
    )
    assert int(summarise_tracks("v", dets).best_frame[0]) == 37  # no keyframes: the top score
    assert int(summarise_tracks("v", dets, (0, 50)).best_frame[0]) == 51  # 1 frame after a keyframe
    assert int(summarise_tracks("v", dets, (0, 50), slack=0.0).best_frame[0]) == 37
    row = summarise_tracks("v", dets, (0, 50, 60)).iloc[0]
    assert int(row.best_frame) == 60 and row.score == pytest.approx(0.995)  # on a keyframe


def test_split_by_frame_balances_decoding_over_long_gops() -> None:
    from jobs.results.tracks import split_by_frame

    box = np.zeros(4)
    keyframes = list(range(0, 1000, 250))
    # seven frames just after one keyframe, two deep into the next GOP: by count one piece would
    # take 4 frames and the next 5 (decoding 5 + 246 frames); by decoding cost the GOPs part
    wanted = {t: (f, box) for t, f in enumerate([1, 2, 3, 4, 5, 6, 7, 495, 496])}
    parts = split_by_frame(wanted, 2, keyframes)
    assert [sorted(f for f, _ in p.values()) for p in parts] == [[1, 2, 3, 4, 5, 6, 7], [495, 496]]
    assert split_by_frame(wanted, 2) != parts  # without keyframes every frame counts as one
    # a GOP is never split, whatever the parts asked for
    wanted = {t: (f, box) for t, f in enumerate([260, 270, 280, 290, 300, 310, 320, 330, 900, 910])}
    for part in split_by_frame(wanted, 2, keyframes):
        assert len({f // 250 for f, _ in part.values()}) == 1


@pytest.mark.slow
def test_a_tracker_error_on_one_video_leaves_the_others_tracked_and_its_rows_kept(
    tmp_path: Path, scene, ffmpeg: str, caffe_weights: Path
) -> None:
    """The tracks pass runs after every shard is committed: an error there on one video's rows
    (a tracker bug met on its data) ended the job before ``videos.parquet``, and every rerun
    met it again. Now that video has no track ids and no people (unknown: null), one error
    line names it, and the other video is tracked and summarised as before."""
    import os
    import subprocess

    from benchmarks.videogen import write_video

    root = tmp_path / "in"
    root.mkdir()
    for name in ("a_fine.mp4", "b_bad.mp4"):
        write_video(root / name, scene, 24, ffmpeg=ffmpeg, gop=12)
    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, "-c", "from jobs.cli.main import app; app()", "run", str(root), "--out", str(out),
         "--weights", str(caffe_weights)],
        env={**os.environ, "MASKJOBS_TEST_FAULT": "track-error:b_bad.mp4"}, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "not tracked" in line]
    assert errors == ["ERROR jobs.results.tracks: b_bad.mp4: not tracked (RuntimeError: injected tracker error on "
                      "b_bad.mp4); its rows are kept without track ids"], proc.stderr[-3000:]
    videos = pd.read_parquet(out / "videos.parquet").set_index("video")
    assert (videos.status == "done").all() and (videos.frames_processed == 24).all()
    assert videos.loc["a_fine.mp4", "people"] > 0 and pd.isna(videos.loc["b_bad.mp4", "people"])
    assert videos.loc["b_bad.mp4", "faces"] == videos.loc["a_fine.mp4", "faces"] > 0  # the same clip
    tracks = pd.read_parquet(out / "tracks.parquet")
    assert set(tracks.video) == {"a_fine.mp4"} and tracks.thumbnail.notna().any()
    frames = pd.read_parquet(out / "frames")
    ids = {v: [d["track"] for ds in f.detections for d in ds] for v, f in frames.groupby("video")}
    assert all(pd.notna(t) and t >= 0 for t in ids["a_fine.mp4"])
    assert all(pd.isna(t) or t < 0 for t in ids["b_bad.mp4"]) and ids["b_bad.mp4"]
