"""One writer per output: the lease on a local path and on S3 (moto on 127.0.0.1): put-if-absent,
heartbeat, expiry and take-over, and what --overwrite refuses to clear."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sinks.lease import LEASE_NAME, OutputLease, OutputLeasedError
from sinks.policy import OutputConflictError
from sinks.store import OutputStore
from tests.conftest import S3Server

Make = Callable[..., OutputLease]


@pytest.fixture(params=["local", "s3"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Make:
    """Leases on one output location: a local folder, or an s3:// prefix on the moto server."""
    if request.param == "local":
        location = str(tmp_path / "out")
    else:
        s3: S3Server = request.getfixturevalue("s3_server")
        location = s3.uri(f"lease/{tmp_path.name}")

    def lease(ttl_s: float = 60.0) -> OutputLease:
        store = OutputStore(location)
        return OutputLease(store.fs, store.root, location=store.location, uri=store._uri, ttl_s=ttl_s)

    return lease


def test_a_second_writer_is_refused_with_one_line_naming_the_holder(make: Make) -> None:
    first, second = make(), make()
    first.acquire()
    try:
        with pytest.raises(OutputLeasedError) as refused:
            second.acquire()
        message = str(refused.value)
        assert "\n" not in message and "another job is writing this output" in message
        assert f"host {os.uname().nodename}, pid {os.getpid()}, since {first.holder.started}" in message
        assert "testing" not in message  # the URI's credentials
    finally:
        first.release()
    second.acquire()  # released: free again
    second.release()


def test_the_heartbeat_keeps_a_lease_and_a_dead_holders_lease_expires(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    alive = make(ttl_s=1.0)
    alive.acquire()
    time.sleep(1.6)  # longer than its ttl: renewed every 0.25 s
    with pytest.raises(OutputLeasedError):
        make(ttl_s=1.0).acquire()
    alive._stop.set()  # the holder dies: no heartbeat, no release
    alive._thread.join()
    time.sleep(1.2)
    taker = make(ttl_s=1.0)
    with caplog.at_level("WARNING", logger="sinks.lease"):
        taker.acquire()
    assert "took over the lease of a job that stopped without releasing it" in caplog.text
    alive.release()  # the old holder's release must not delete the new holder's lease
    with pytest.raises(OutputLeasedError):
        make().acquire()
    taker.release()


def test_of_many_starting_at_once_exactly_one_wins(make: Make) -> None:
    leases = [make() for _ in range(6)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(leases))

    def take(lease: OutputLease) -> None:
        barrier.wait()
        try:
            lease.acquire()
            outcomes.append("won")
        except OutputLeasedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 5 + ["won"]
    for lease in leases:
        lease.release()


def test_overwrite_never_clears_what_is_not_a_maskjobs_output(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "videos.parquet").write_bytes(b"my own table")
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(OutputConflictError, match="not a maskjobs output"):
        OutputStore(mine).start({}, fingerprint="f", overwrite=True)
    assert (mine / "videos.parquet").read_bytes() == b"my own table" and (mine / "notes.txt").exists()
    (mine / "videos.parquet").unlink()
    (mine / "job.json").write_text('{"name": "some other tool"}')
    with pytest.raises(OutputConflictError, match="not a maskjobs job's"):
        OutputStore(mine).start({}, fingerprint="f", overwrite=True)
    assert (mine / "job.json").read_text() == '{"name": "some other tool"}'


def test_run_on_an_output_another_job_holds_is_refused_before_anything_is_written(
    tmp_path: Path, caffe_weights: Path
) -> None:
    from jobs.cli.main import app

    out = tmp_path / "out"
    (tmp_path / "clip.mp4").write_bytes(b"never decoded: refused first")
    holder = OutputStore(out)
    with holder.leased() as lease:
        result = CliRunner().invoke(
            app, ["run", str(tmp_path / "clip.mp4"), "--out", str(out), "--weights", str(caffe_weights), "--overwrite"],
        )
        assert result.exit_code == 2, result.output
        line = f"error: {out}: another job is writing this output (host {os.uname().nodename}, pid {os.getpid()}, "
        assert result.stderr.startswith(line) and result.stderr.count("\n") == 1
        assert sorted(p.name for p in out.iterdir()) == [LEASE_NAME]
        assert lease.holder.started in result.stderr
    assert not (out / LEASE_NAME).exists()  # released


@pytest.mark.slow  # spawns a process
def test_a_lease_of_a_killed_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    """A run killed here and started again need not wait for the heartbeat to expire."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    code = (
        "import sys, time\nfrom sinks.store import OutputStore\n"
        "with OutputStore(sys.argv[1]).leased():\n    print('held', flush=True)\n    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(OutputLeasedError, match=f"pid {proc.pid}"):
            OutputStore(out).leased().__enter__()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with OutputStore(out).leased() as lease:  # at once: its holder is gone
        assert lease.holder.pid == os.getpid()
