"""The scheduler's decisions (order, concurrency, retries, splitting packs, time-outs) without Ray:
generators and result refs are plain objects here, as they are opaque to it."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.pipeline.plan import Segment, Shard, split_pack
from jobs.pipeline.records import DetectedBatch
from jobs.pipeline.scheduler import Scheduler, ShardRun, ShardTry, Verdict


def _single(name: str, frames: int = 10) -> Shard:
    return Shard(f"id-{name}", (Segment(name, f"/in/{name}", tuple(range(frames))),))


def _pack(*names: str) -> Shard:
    return Shard("id-pack-" + "-".join(names), tuple(Segment(n, f"/in/{n}", (0, 1, 2)) for n in names))


def _scheduler(shards: list[Shard], *, max_retries: int = 2, timeout: float = 30.0, decoders: int = 2) -> Scheduler:
    return Scheduler(shards, max_retries=max_retries, shard_timeout_s=timeout, max_decoders=decoders)


def _start_all(scheduler: Scheduler, now: float = 0.0) -> list[ShardRun]:
    """Starts what the scheduler allows now, as the driver's loop does."""
    runs = []
    while (shard_try := scheduler.next_to_start()) is not None:
        runs.append(scheduler.begin(shard_try, gen=object(), now=now))
    return runs


def _batch(video: str, frames: list[int]) -> DetectedBatch:
    n = len(frames)
    return DetectedBatch(
        video=np.array([video] * n, object), frame=np.array(frames, np.int64), time_s=np.zeros(n),
        counts=np.zeros(n, np.int32), labels=np.zeros(0, np.int64), scores=np.zeros(0, np.float32),
        boxes=np.zeros((0, 4), np.float32),
    )


def test_shards_start_in_planned_order_up_to_max_decoders() -> None:
    shards = [_single(n) for n in "abcd"]
    scheduler = _scheduler(shards, decoders=2)
    runs = _start_all(scheduler)
    assert [r.shard for r in runs] == shards[:2] and all(r.attempt == 0 for r in runs)
    assert _start_all(scheduler) == []  # both decoders busy
    runs[0].exhausted = True  # all decoded, waiting for detections: its decoder is free
    assert [r.shard for r in _start_all(scheduler)] == [shards[2]]
    assert [r.shard for r in scheduler.running()] == shards[:3]  # in start order
    scheduler.finish(runs[0])
    assert [r.shard for r in scheduler.running()] == shards[1:3] and scheduler.busy()


def test_a_failed_single_shard_is_retried_after_the_queue_then_its_video_fails() -> None:
    a, b = _single("a.mp4"), _single("b.mp4")
    scheduler = _scheduler([a, b], max_retries=2, decoders=1)
    (run,) = _start_all(scheduler)
    assert scheduler.fail(run, "decoder crashed") is Verdict.RETRY
    assert list(scheduler.queue) == [ShardTry(b), ShardTry(a, 1)]  # the retry goes after what was queued
    assert not scheduler.is_active(run)
    (run_b,) = _start_all(scheduler)
    scheduler.finish(run_b)
    (run,) = _start_all(scheduler)
    assert run.shard_try == ShardTry(a, 1)
    assert scheduler.fail(run, "crashed again") is Verdict.RETRY
    (run,) = _start_all(scheduler)
    assert run.attempt == 2
    assert scheduler.fail(run, "crashed a third time") is Verdict.FAILED
    assert scheduler.failures == {"a.mp4": "crashed a third time"}
    assert not scheduler.busy()


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_a_shard_runs_max_retries_plus_one_times(max_retries: int) -> None:
    scheduler = _scheduler([_single("v.mp4")], max_retries=max_retries)
    attempts = []
    while scheduler.busy():
        (run,) = _start_all(scheduler)
        attempts.append(run.attempt)
        scheduler.fail(run, f"attempt {run.attempt} failed")
    assert attempts == list(range(max_retries + 1))
    assert scheduler.failures == {"v.mp4": f"attempt {max_retries} failed"}


def test_a_failed_pack_is_split_into_one_shard_per_video_whatever_its_retries() -> None:
    pack = _pack("x.mp4", "y.mp4", "z.mp4")
    scheduler = _scheduler([pack, _single("later.mp4")], max_retries=0, decoders=1)
    (run,) = _start_all(scheduler)
    assert scheduler.fail(run, "one of them is bad") is Verdict.SPLIT
    assert scheduler.failures == {}  # no video has failed yet: each runs alone first
    queued = list(scheduler.queue)
    assert queued[0].shard.videos == ("later.mp4",)
    assert [t.shard for t in queued[1:]] == split_pack(pack)
    assert all(t.attempt == 0 for t in queued)
    while scheduler.busy():  # only y.mp4 fails again: it alone is reported
        (run,) = _start_all(scheduler)
        if run.shard.videos == ("y.mp4",):
            assert scheduler.fail(run, "y is bad") is Verdict.FAILED
        else:
            scheduler.finish(run)
    assert scheduler.failures == {"y.mp4": "y is bad"}


def test_the_first_error_of_a_video_is_kept() -> None:
    long = Shard("id-1", (Segment("long.mp4", "/in/long.mp4", (0, 1)),))
    rest = Shard("id-2", (Segment("long.mp4", "/in/long.mp4", (2, 3)),))
    scheduler = _scheduler([long, rest], max_retries=0)
    first, second = _start_all(scheduler)
    scheduler.fail(first, "first error")
    scheduler.fail(second, "second error")
    assert scheduler.failures == {"long.mp4": "first error"}


def test_no_progress_times_out_only_once_the_task_runs() -> None:
    scheduler = _scheduler([_single("v.mp4")], timeout=4.0)
    (run,) = _start_all(scheduler, now=100.0)
    assert scheduler.stalled(run, now=1000.0) is None  # still queued for a CPU: not a stall
    assert run.took(now=101.0) is False  # the STARTED marker
    assert run.running
    assert scheduler.stalled(run, now=105.0) is None  # 4 s exactly: not yet
    assert run.took(now=105.0) is True  # a batch: progress
    assert scheduler.stalled(run, now=109.0) is None
    assert scheduler.stalled(run, now=109.5) == "no progress for 4 s (decoder hung or crashed repeatedly)"
    run.dispatched("ref-0")
    run.received("ref-0", _batch("v.mp4", [0]), now=109.5)  # detections back count as progress
    assert scheduler.stalled(run, now=113.0) is None


def test_results_commit_in_decode_order_whatever_order_they_return_in() -> None:
    scheduler = _scheduler([_single("v.mp4", frames=6)])
    (run,) = _start_all(scheduler)
    run.took(0.0)
    for ref in ("r0", "r1", "r2"):
        assert run.took(1.0)
        run.dispatched(ref)
    assert run.pending == {"r0": 0, "r1": 1, "r2": 2}
    run.exhausted = True
    run.received("r2", _batch("v.mp4", [4, 5]), now=2.0)
    run.received("r0", _batch("v.mp4", [0, 1]), now=2.0)
    assert not run.complete  # r1 is still out
    run.received("r1", _batch("v.mp4", [2, 3]), now=3.0)
    assert run.complete and run.last_progress == 3.0
    assert [b["frame"].tolist() for b in run.in_order()] == [[0, 1], [2, 3], [4, 5]]


def test_an_empty_plan_is_not_busy() -> None:
    scheduler = _scheduler([])
    assert not scheduler.busy() and scheduler.next_to_start() is None and scheduler.failures == {}


def test_waiting_for_busy_detectors_is_not_a_hang() -> None:
    """A shard whose frames are all decoded only waits for detections: however long the
    detectors take (a hung one is the pool's to replace), it does not fail as "no progress"."""
    scheduler = _scheduler([_single("v.mp4")], timeout=4.0)
    (run,) = _start_all(scheduler, now=100.0)
    run.took(now=100.0)
    assert run.took(now=101.0)
    run.dispatched("ref-0")
    run.exhausted = True
    assert scheduler.stalled(run, now=1000.0) is None


def test_a_decoder_held_back_by_full_detectors_is_not_a_hang() -> None:
    """While the detectors are full the driver asks the decoder for nothing: that time is
    queueing (``queued``); only silence while the driver asks counts."""
    scheduler = _scheduler([_single("v.mp4")], timeout=4.0)
    (run,) = _start_all(scheduler, now=100.0)
    run.took(now=100.0)
    for now in (102.0, 105.0, 108.0, 111.0):  # detectors full: the driver does not ask
        run.queued(now)
        assert scheduler.stalled(run, now=now + 1.0) is None
    assert scheduler.stalled(run, now=115.5) == "no progress for 4 s (decoder hung or crashed repeatedly)"


def test_a_resubmitted_call_keeps_its_place() -> None:
    scheduler = _scheduler([_single("v.mp4", frames=4)])
    (run,) = _start_all(scheduler)
    run.took(0.0)
    for ref in ("r0", "r1"):
        assert run.took(1.0)
        run.dispatched(ref)
    run.exhausted = True
    run.resubmitted("r0", "r0-again")
    run.received("r1", _batch("v.mp4", [2, 3]), now=2.0)
    run.received("r0-again", _batch("v.mp4", [0, 1]), now=3.0)
    assert run.complete and [b["frame"].tolist() for b in run.in_order()] == [[0, 1], [2, 3]]
