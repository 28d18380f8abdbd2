"""The Jobs API layer without a cluster: tokens, and a finished job's outcome as an exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.cluster.client import describe, find_token, outcome_code


def _info(status: str, exit_code: int | None = None, message: str | None = None):
    from ray.job_submission import JobDetails, JobStatus, JobType

    return JobDetails(
        type=JobType.SUBMISSION, submission_id="raysubmit_x", entrypoint="python -m jobs run v --out o",
        status=JobStatus(status), driver_exit_code=exit_code, message=message,
    )


CRASH = (
    "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
    "Traceback (most recent call last):\n  File \"<frozen runpy>\", line 198, in _run_module_as_main\n"
    "ModuleNotFoundError: No module named 'decord'\n"
)
BAD_INPUT = (
    "Job entrypoint command failed with exit code 2, last available logs (truncated to 20,000 chars):\n"
    "error: /mnt/v: no such file or directory\n"
)


@pytest.mark.parametrize(
    "status,exit_code,message,code,reason",
    [
        ("SUCCEEDED", 0, "Job finished successfully.", 0, "raysubmit_x: SUCCEEDED"),
        ("FAILED", 1, "Job entrypoint command failed with exit code 1 ...\nerror: a.mp4: empty", 1,
         "some videos failed"),
        ("FAILED", 1, CRASH, 3, "ModuleNotFoundError: No module named 'decord'"),
        ("FAILED", 2, BAD_INPUT, 3, "exit code 2, /mnt/v: no such file or directory"),
        ("FAILED", 127, "Job entrypoint command failed with exit code 127 ...\n/bin/sh: 1: python: not found", 3,
         "exit code 127"),
        ("STOPPED", None, "Job was intentionally stopped.", 3, "STOPPED, Job was intentionally stopped."),
    ],
)
def test_outcome_and_description(status: str, exit_code: int | None, message: str, code: int, reason: str) -> None:
    info = _info(status, exit_code, message)
    assert outcome_code(info) == code
    assert reason in describe(info) and "\n" not in describe(info)


def test_token_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    assert find_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert find_token().value == "from-home"
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert find_token().value == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", " from-env ")
    assert find_token().value == "from-env" and find_token().source == "$RAY_AUTH_TOKEN"


# -- issue 17 item 16: the token is not sent in clear text to another machine -----------------


def _outward_ip() -> str | None:
    """This machine's address on its network (no packet is sent), or None if it only has loopback."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))  # TEST-NET: only picks the outward interface
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


@pytest.fixture
def eavesdropper():
    """A plain HTTP server on this machine's outward address that records Authorization headers."""
    import http.server
    import threading

    ip = _outward_ip()
    if ip is None:
        pytest.skip("this machine has no address but loopback to stand for another host")
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Authorization") or "")
            self.send_response(404)
            self.end_headers()

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((ip, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{ip}:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _with_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("MASKJOBS_ALLOW_PLAIN_HTTP_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret-token")


def test_token_is_not_sent_over_plain_http_to_another_host(eavesdropper, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from jobs.cli.main import app
    from jobs.cluster.client import Cluster
    from jobs.errors import ClusterError

    address, seen = eavesdropper
    _with_token(monkeypatch, tmp_path)
    try:
        Cluster(address)
        error: Exception | None = None
    except Exception as exc:  # noqa: BLE001 - what main raised is part of the evidence
        error = exc
    assert not any("s3cret-token" in h for h in seen), f"the token went over plain http: {seen}"
    assert isinstance(error, ClusterError) and "refusing to send the Ray token" in str(error), error
    assert "MASKJOBS_ALLOW_PLAIN_HTTP_TOKEN" in str(error) and "\n" not in str(error)
    result = CliRunner().invoke(app, ["jobs", "--address", address])
    assert result.exit_code == 2, result.output
    assert "refusing to send the Ray token" in result.output
    assert not any("s3cret-token" in h for h in seen), seen  # nothing reached the wire


def test_token_opt_in_and_safe_transports(eavesdropper, tmp_path, monkeypatch) -> None:
    from jobs.cluster.client import Cluster, Token, check_token_transport
    from jobs.errors import ClusterError

    address, seen = eavesdropper
    _with_token(monkeypatch, tmp_path)
    token = Token("t", "$RAY_AUTH_TOKEN")
    for ok in ("https://head.example:8265", "http://127.0.0.1:8265", "localhost:8265", "http://[::1]:8265"):
        check_token_transport(ok, token)
    check_token_transport("http://head.example:8265", None)  # no token: nothing to leak
    for bad in ("http://head.example:8265", "head.example:8265", "http://10.0.0.5:8265"):
        with pytest.raises(ClusterError):
            check_token_transport(bad, token)
    monkeypatch.setenv("MASKJOBS_ALLOW_PLAIN_HTTP_TOKEN", "1")  # the user opts in: it is sent
    with pytest.raises(ClusterError):  # the fake head answers 404: not a Jobs API
        Cluster(address)
    assert "Bearer s3cret-token" in seen
