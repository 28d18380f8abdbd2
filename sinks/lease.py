"""One writer per output: a lease object in the output location, taken before anything is written.

``OUT/.maskjobs-lease.json`` names its holder (host, pid, start time) and carries a heartbeat the
holder renews every ``ttl_s / 4`` seconds from a daemon thread. Taking it is a put-if-absent the
store guarantees, so of two jobs started at once exactly one wins:

* a local (or mounted) path: the lease written aside, then ``link()``-ed into place (which fails
  if the name exists: put-if-absent, and never a half-written lease);
* ``s3://``: a conditional ``PutObject`` with ``If-None-Match: *``, renewed with ``If-Match:
  <its ETag>`` (S3's conditional writes). pyarrow's S3 filesystem cannot send either header,
  so these few requests go through botocore, with the credentials and pyarrow query options
  (``endpoint_override``, ``scheme``, ``region``) the output URI uses;
* other filesystems (``gs://``, ``hdfs://`` ...): check, then write: a best effort, not atomic.

A lease whose heartbeat is older than ``ttl_s``, or whose holder was a process on this host that
is gone (a run killed here, rerun at once), belongs to a killed job and is taken over (on S3
by ``If-Match`` on the stale lease's ETag, so two jobs taking it over at once cannot both win;
locally by renaming the stale file away first, which only one can do). Another live holder is
:class:`OutputLeasedError`, one line naming it.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from detector.errors import InputError
from sinks.atomic import make_dirs

logger = logging.getLogger(__name__)

LEASE_NAME = ".maskjobs-lease.json"
DEFAULT_TTL_S = 60.0


class OutputLeasedError(InputError):
    """Another running job holds the output location."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: for the message that refuses a second writer."""

    host: str
    pid: int
    started: str  # ISO time the holder took the lease
    token: str  # random: which of two leases with the same host and pid

    @classmethod
    def me(cls) -> Holder:
        return cls(os.uname().nodename, os.getpid(), datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   secrets.token_hex(8))

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, since {self.started}"


def _encode(holder: Holder, ttl_s: float) -> bytes:
    return json.dumps({"holder": holder.__dict__, "heartbeat": time.time(), "ttl_s": ttl_s}).encode()


def _decode(data: bytes) -> tuple[Holder | None, float]:
    """``(holder, heartbeat epoch)``; a lease that cannot be read counts as expired."""
    try:
        doc = json.loads(data)
        return Holder(**doc["holder"]), float(doc["heartbeat"])
    except (ValueError, KeyError, TypeError):
        return None, 0.0


def _dead_here(holder: Holder) -> bool:
    """A holder on this host whose process is gone (a killed run): its lease need not expire first."""
    if holder.host != os.uname().nodename or holder.pid == os.getpid():
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class _Backend:
    """Put-if-absent, replace-if-unchanged, read and delete of one small object."""

    def create(self, data: bytes) -> str | None:
        """Writes the lease if absent: its version tag, or None if one exists."""
        raise NotImplementedError

    def read(self) -> tuple[bytes, str] | None:
        """The lease's bytes and version tag, or None if absent."""
        raise NotImplementedError

    def replace(self, data: bytes, tag: str) -> str | None:
        """Overwrites the lease if it is still at version ``tag``: the new tag, or None."""
        raise NotImplementedError

    def delete(self, tag: str) -> None:
        raise NotImplementedError


class _LocalBackend(_Backend):
    def __init__(self, path: str) -> None:
        self.path = path

    def create(self, data: bytes) -> str | None:
        # written whole aside, then hard-linked into place: link() fails if the name exists, so
        # this is put-if-absent and a reader never sees a lease half written (O_EXCL then write would be)
        make_dirs(os.path.dirname(self.path))  # owner-only, like every folder maskjobs creates
        tmp = f"{self.path}.{secrets.token_hex(6)}.part"
        try:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return None
            except OSError:  # a file system without hard links (some FUSE mounts): O_EXCL, then write
                return self._create_exclusive(data)
        finally:
            os.unlink(tmp)
        return self._tag()

    def _create_exclusive(self, data: bytes) -> str | None:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return self._tag()

    def _tag(self) -> str:
        st = os.stat(self.path)
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"

    def read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as f:
                return f.read(), self._tag()
        except FileNotFoundError:
            return None

    def replace(self, data: bytes, tag: str) -> str | None:
        current = self.read()
        if current is None or current[1] != tag:
            return None
        if not _is_renewal(data, current[0]):
            # taking over a stale lease: move it away first; of two takers only one can
            stale = f"{self.path}.{secrets.token_hex(6)}.stale"
            try:
                os.rename(self.path, stale)
            except FileNotFoundError:
                return None
            os.unlink(stale)
            return self.create(data)
        tmp = f"{self.path}.{secrets.token_hex(6)}.part"
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(data)
        os.replace(tmp, self.path)  # a renewal by the holder itself
        return self._tag()

    def delete(self, tag: str) -> None:
        current = self.read()
        if current is not None and current[1] == tag:
            os.unlink(self.path)


def _is_renewal(new: bytes, old: bytes) -> bool:
    a, _ = _decode(new)
    b, _ = _decode(old)
    return a is not None and b is not None and a.token == b.token


class _S3Backend(_Backend):
    def __init__(self, uri: str, key: str) -> None:
        import botocore.config
        import botocore.session

        parts = urllib.parse.urlsplit(uri)
        query = dict(urllib.parse.parse_qsl(parts.query))
        endpoint = query.get("endpoint_override")
        if endpoint and "://" not in endpoint:
            endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
        region = query.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        self.bucket = parts.hostname or ""
        if region is None and endpoint is None:
            region = pafs.resolve_s3_region(self.bucket)
        self.key = key
        self.client = botocore.session.get_session().create_client(
            "s3", region_name=region, endpoint_url=endpoint,
            aws_access_key_id=urllib.parse.unquote(parts.username) if parts.username else None,
            aws_secret_access_key=urllib.parse.unquote(parts.password) if parts.password else None,
            config=botocore.config.Config(s3={"addressing_style": "path" if endpoint else "auto"}),
        )

    def _conditional(self, **kwargs: Any) -> str | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, **kwargs)["ETag"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return None
            raise

    def create(self, data: bytes) -> str | None:
        return self._conditional(Body=data, IfNoneMatch="*")

    def read(self) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return got["Body"].read(), got["ETag"]

    def replace(self, data: bytes, tag: str) -> str | None:
        return self._conditional(Body=data, IfMatch=tag)

    def delete(self, tag: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=tag)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "NoSuchKey", "404"):
                raise


class _FsBackend(_Backend):
    """Any other pyarrow filesystem: check, then write (not atomic)."""

    def __init__(self, fs: pafs.FileSystem, path: str) -> None:
        self.fs, self.path = fs, path

    def read(self) -> tuple[bytes, str] | None:
        if self.fs.get_file_info(self.path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(self.path) as f:
            data = f.read()
        return data, str(hash(data))

    def _write(self, data: bytes) -> str:
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)
        return str(hash(data))

    def create(self, data: bytes) -> str | None:
        if self.read() is not None:
            return None
        self.fs.create_dir(posixpath.dirname(self.path), recursive=True)  # a no-op on object stores
        return self._write(data)

    def replace(self, data: bytes, tag: str) -> str | None:
        current = self.read()
        return self._write(data) if current is not None and current[1] == tag else None

    def delete(self, tag: str) -> None:
        current = self.read()
        if current is not None and current[1] == tag:
            self.fs.delete_file(self.path)


def _backend(fs: pafs.FileSystem, root: str, uri: str | None) -> _Backend:
    path = posixpath.join(root, LEASE_NAME)
    if isinstance(fs, pafs.LocalFileSystem):
        return _LocalBackend(path)
    if isinstance(fs, pafs.S3FileSystem) and uri is not None:
        return _S3Backend(uri, path.split("/", 1)[1])
    logger.warning("%s: this store has no conditional writes; the output's lease is best effort", uri or root)
    return _FsBackend(fs, path)


class OutputLease:
    """The lease on one output location. :meth:`acquire`, then :meth:`release` (also on failure)."""

    def __init__(
        self, fs: pafs.FileSystem, root: str, *, location: str, uri: str | None = None, ttl_s: float = DEFAULT_TTL_S
    ) -> None:
        self.location = location
        self.ttl_s = ttl_s
        self.holder = Holder.me()
        self._backend = _backend(fs, root, uri)
        self._tag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Takes the lease or raises :class:`OutputLeasedError` naming the live holder."""
        try:
            self._acquire()
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{self.location}: cannot take the output's lease ({exc})") from None
        self._thread = threading.Thread(target=self._beat, name="maskjobs-lease", daemon=True)
        self._thread.start()

    def _acquire(self) -> None:
        for _ in range(3):  # a lease released or taken over between our calls: look again
            data = _encode(self.holder, self.ttl_s)
            if (tag := self._backend.create(data)) is not None:
                self._tag = tag
                return
            current = self._backend.read()
            if current is None:
                continue
            holder, beat = _decode(current[0])
            age = time.time() - beat
            if holder is not None and age < self.ttl_s and not _dead_here(holder):
                raise OutputLeasedError(
                    f"{self.location}: another job is writing this output ({holder.describe()}; last heartbeat "
                    f"{age:.0f} s ago); wait for it, stop it, or choose another --out"
                )
            if (tag := self._backend.replace(data, current[1])) is not None:
                logger.warning("%s: took over the lease of a job that stopped without releasing it (%s)",
                               self.location, holder.describe() if holder else "unreadable lease")
                self._tag = tag
                return
        raise OutputLeasedError(f"{self.location}: another job is taking this output's lease at the same time")

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                tag = self._backend.replace(_encode(self.holder, self.ttl_s), self._tag or "")
            except Exception as exc:  # the store's errors (OSError, botocore's): try again next beat
                logger.warning("%s: cannot renew the output's lease (%s)", self.location, exc)
                continue
            if tag is None:
                logger.error("%s: this job's lease on the output was taken over by another job", self.location)
                return
            self._tag = tag

    def release(self) -> None:
        """Stops the heartbeat and deletes the lease if it is still this job's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._tag is not None:
            try:
                self._backend.delete(self._tag)
            except Exception as exc:  # the store's errors: the lease then expires on its own
                logger.warning("%s: cannot release the output's lease (%s); it expires in %g s",
                               self.location, exc, self.ttl_s)
            self._tag = None
