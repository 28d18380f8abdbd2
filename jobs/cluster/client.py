"""Talking to a Ray cluster's Jobs API: connect (with token auth), status, logs, stop, list.

A thin layer over :class:`ray.job_submission.JobSubmissionClient`. What it adds:

* token auth: ``$RAY_AUTH_TOKEN``, else the file ``$RAY_AUTH_TOKEN_PATH``, else
  ``~/.ray/auth_token`` is sent as ``Authorization: Bearer ...`` (Ray's own client only
  sends it when ``RAY_AUTH_MODE=token`` is set); a head that refuses us is one line
  saying what to set;
* ``--address`` wins over ``$RAY_ADDRESS`` (Ray's client lets the variable win);
* the token never travels in clear text to another machine: a plain ``http://`` address
  (or one without a scheme) is refused unless it is this machine (loopback) or the user
  opts in with ``$MASKJOBS_ALLOW_PLAIN_HTTP_TOKEN=1`` (:func:`check_token_transport`);
* a job's outcome as maskjobs' exit code (:func:`outcome_code`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from jobs.errors import ClusterError, one_line

logger = logging.getLogger(__name__)

ADDRESS_ENV = "RAY_ADDRESS"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
PLAIN_HTTP_ENV = "MASKJOBS_ALLOW_PLAIN_HTTP_TOKEN"

# Exit codes of `maskjobs submit --wait` (and `maskjobs run` inside the job).
EXIT_DONE = 0
EXIT_VIDEOS_FAILED = 1
EXIT_JOB_FAILED = 3
EXIT_PARTIAL = 4  # no video failed, some are partial (``maskjobs run``'s code, passed on)

# Ray's client modules set INFO on their own loggers (package uploads, websocket closed).
_RAY_CLIENT_LOGGERS = ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk")


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # where it came from, for error messages


def find_token() -> Token | None:
    """The cluster's auth token: ``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return Token(os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}")
    candidates = [Path(os.environ[TOKEN_PATH_ENV])] if os.environ.get(TOKEN_PATH_ENV) else []
    candidates.append(Path.home() / ".ray" / "auth_token")
    for path in candidates:
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value:
            return Token(value, str(path))
    return None


def _host(address: str) -> tuple[str, str]:
    """``(scheme, host)`` of a Jobs API address; no scheme means ``http`` (as Ray's client reads it)."""
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"http://{address}")
    return parts.scheme.lower(), (parts.hostname or "").lower()


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", "auto") or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def check_token_transport(address: str, token: Token | None) -> None:
    """Refuses to send ``token`` in clear text to another machine.

    Allowed: no token; an ``https://`` address; a loopback host (``localhost``, 127.0.0.0/8,
    ``::1``); or ``$MASKJOBS_ALLOW_PLAIN_HTTP_TOKEN=1`` (e.g. a private network or an SSH tunnel
    the user trusts). Anything else raises :class:`ClusterError` before a byte is sent.
    """
    if token is None:
        return
    scheme, host = _host(address)
    if scheme == "https" or _is_loopback(host):
        return
    if os.environ.get(PLAIN_HTTP_ENV, "").strip().lower() in ("1", "true", "yes"):
        logger.warning("sending the Ray token from %s to %s over plain %s (%s is set)", token.source, host, scheme,
                       PLAIN_HTTP_ENV)
        return
    raise ClusterError(
        f"refusing to send the Ray token from {token.source} to {address} over plain {scheme}: anyone on the "
        f"network could read it; use https://, an SSH tunnel to localhost, or set {PLAIN_HTTP_ENV}=1 to send it anyway"
    )


@contextmanager
def _explicit_address() -> Iterator[None]:
    """Ray's client prefers ``$RAY_API_SERVER_ADDRESS``/``$RAY_ADDRESS`` to its argument: hide them."""
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", ADDRESS_ENV) if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _auth_message(address: str, exc: Exception, token: Token | None) -> str:
    text = str(exc)
    if token is None or "Authentication required" in text:
        return (
            f"the Ray cluster at {address} requires a token: set {TOKEN_ENV} "
            "(or put it in ~/.ray/auth_token; `ray get-auth-token` on the head prints it)"
        )
    return f"the Ray cluster at {address} refused the token from {token.source}: set {TOKEN_ENV} to the head's token"


class Cluster:
    """One Ray cluster's Jobs API (``http://HEAD:8265``)."""

    def __init__(self, address: str | None) -> None:
        address = address or os.environ.get(ADDRESS_ENV)
        if not address:
            raise ClusterError(f"no Ray cluster: pass --address http://HEAD:8265 or set {ADDRESS_ENV}")
        self.address = address
        self.token = find_token()
        check_token_transport(address, self.token)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient

        if not logging.getLogger().isEnabledFor(logging.DEBUG):  # Ray's own INFO lines (uploads), unless -v
            for name in _RAY_CLIENT_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)

        headers = {"Authorization": f"Bearer {self.token.value}"} if self.token else None
        try:
            with _explicit_address():
                self.client = JobSubmissionClient(address, headers=headers)
        except AuthenticationError as exc:
            raise ClusterError(_auth_message(address, exc, self.token)) from None
        except (ConnectionError, OSError, ValueError, RuntimeError) as exc:  # RuntimeError: not a Jobs API
            raise ClusterError(
                f"cannot reach the Ray Jobs API at {address} ({one_line(exc)}); "
                "is the head up and its dashboard port reachable from here?"
            ) from None

    @contextmanager
    def _call(self, job_id: str | None = None) -> Iterator[None]:
        """Turns the client's errors into one-line :class:`ClusterError` messages."""
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError as exc:
            raise ClusterError(_auth_message(self.address, exc, self.token)) from None
        except RuntimeError as exc:
            text = str(exc)
            if job_id is not None and ("does not exist" in text or "404" in text):
                raise ClusterError(f"no job {job_id} on the Ray cluster at {self.address}") from None
            raise ClusterError(f"{self.address}: {one_line(exc)}") from None
        except (ConnectionError, OSError) as exc:
            raise ClusterError(f"lost the Ray Jobs API at {self.address} ({one_line(exc)})") from None

    # -- jobs ----------------------------------------------------------------------------
    def submit(self, entrypoint: str, runtime_env: dict[str, Any], metadata: dict[str, str]) -> str:
        with self._call():
            return self.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata)

    def info(self, job_id: str) -> Any:
        with self._call(job_id):
            return self.client.get_job_info(job_id)

    def logs(self, job_id: str) -> str:
        with self._call(job_id):
            return self.client.get_job_logs(job_id)

    def list(self) -> list[Any]:
        with self._call():
            return sorted(self.client.list_jobs(), key=lambda j: j.start_time or 0)

    def stop(self, job_id: str, *, timeout_s: float = 30) -> Any:
        """Asks the job to stop and waits (up to ``timeout_s``) until it has; returns its info."""
        with self._call(job_id):
            self.client.stop_job(job_id)
        return self.wait(job_id, timeout_s=timeout_s)

    def wait(self, job_id: str, *, timeout_s: float | None = None, poll_s: float = 1.0) -> Any:
        """Polls until the job is over (or ``timeout_s`` passed); returns its last info."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            info = self.info(job_id)
            if info.status.is_terminal() or (deadline is not None and time.monotonic() >= deadline):
                return info
            time.sleep(poll_s)

    def follow(self, job_id: str, out: TextIO) -> Any:
        """Streams the job's logs to ``out`` until it is over; returns its final info."""
        with self._call(job_id):
            self.info(job_id)  # a missing job is an error before we start streaming

            async def tail() -> None:
                async for chunk in self.client.tail_job_logs(job_id):
                    out.write(chunk)
                    out.flush()

            try:
                asyncio.run(tail())
            except RuntimeError as exc:  # the stream closed early (head restarted, network): poll instead
                logger.warning("log stream of %s closed (%s); waiting for the job to end", job_id, one_line(exc))
        return self.wait(job_id)


def outcome_code(info: Any) -> int:
    """A finished job as maskjobs' exit code: 0 done, 1 videos failed, 3 job failed or stopped,
    4 no video failed but some are partial."""
    status = str(getattr(info.status, "value", info.status))
    if status == "SUCCEEDED":
        return EXIT_DONE
    if status == "FAILED" and info.driver_exit_code == EXIT_VIDEOS_FAILED and not _crashed(info.message):
        return EXIT_VIDEOS_FAILED
    if status == "FAILED" and info.driver_exit_code == EXIT_PARTIAL:
        return EXIT_PARTIAL
    return EXIT_JOB_FAILED


def _crashed(message: str | None) -> bool:
    """Python exits 1 on an uncaught exception too: its traceback tells it from failed videos."""
    return "Traceback (most recent call last):" in (message or "")


def describe(info: Any) -> str:
    """One line: the job's status, and why when it did not succeed."""
    status = str(getattr(info.status, "value", info.status))
    parts = [f"{info.submission_id or info.job_id}: {status}"]
    if info.driver_exit_code is not None and status != "SUCCEEDED":
        parts.append(f"exit code {info.driver_exit_code}")
    if status == "FAILED" and info.driver_exit_code == EXIT_VIDEOS_FAILED and not _crashed(info.message):
        parts.append("some videos failed (their errors: `maskjobs logs`, and videos.parquet)")
    elif status in ("FAILED", "STOPPED") and info.message:
        parts.append(_reason(info.message))
    return ", ".join(parts)


def _reason(message: str) -> str:
    """Ray's failure message holds the driver's last logs: its ``error:`` line is the reason."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1][len("error: "):][:300]
    if _crashed(message):  # the exception's own line ends the traceback
        return lines[-1][:300]
    return one_line(Exception(message))
