"""A job's output store, with a start / write / commit lifecycle and exactly-once shards.

:class:`OutputStore` is a small facade over one output location (:mod:`sinks.layout` describes
the files): :mod:`sinks.policy` decides whether a run may use it (resume, overwrite or refuse),
:mod:`sinks.writer` writes it, :mod:`sinks.reader` reads it back.

Every file is written aside (``.NAME.<random>.part`` beside it, ignored by Parquet readers) and
then moved into place (:mod:`sinks.atomic`: a rename on a local or network-mounted file system,
a single server-side copy on an object store, where the final object appears whole or not at
all), so a reader never sees a partial file. Each shard file's metadata lists the frame ranges
of the segments it holds; :meth:`OutputStore.start` reads them back so a rerun plans only what
is not committed yet.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from detector.errors import InputError, one_line
from sinks.layout import OutputLayout, SegmentRange
from sinks.lease import DEFAULT_TTL_S, OutputLease
from sinks.location import is_uri
from sinks.policy import prepare_output
from sinks.reader import OutputReader
from sinks.writer import OutputWriter


class OutputStore:
    """A job's output under ``location``: a local path or a URI, or a path on ``filesystem``.

    Attributes:
        location: for messages (no credentials); fs, root: the filesystem and the path on it;
        annotated_dir: local folder of annotated videos, None where the location is not local;
        reader, writer: the parts this facade delegates to.
    """

    def __init__(self, location: str | Path, filesystem: pafs.FileSystem | None = None) -> None:
        self.layout = OutputLayout.open(location, filesystem)
        self._uri = str(location) if filesystem is None and is_uri(str(location)) else None
        self.reader = OutputReader(self.layout)
        self.writer = OutputWriter(self.layout)

    @property
    def location(self) -> str:
        return self.layout.location

    @property
    def fs(self) -> pafs.FileSystem:
        return self.layout.fs

    @property
    def root(self) -> str:
        return self.layout.root

    @property
    def annotated_dir(self) -> Path | None:
        return self.layout.annotated_dir

    # -- one writer --------------------------------------------------------------------------
    @contextmanager
    def leased(self, *, ttl_s: float = DEFAULT_TTL_S) -> Iterator[OutputLease]:
        """Holds the location's lease (:mod:`sinks.lease`) for the block: a second job on the same
        output is refused with :class:`sinks.lease.OutputLeasedError` naming this one. Take it
        before :meth:`start`, so ``overwrite`` never clears an output another job writes."""
        lease = OutputLease(self.fs, self.root, location=self.location, uri=self._uri, ttl_s=ttl_s)
        lease.acquire()
        try:
            yield lease
        finally:
            lease.release()

    # -- start ---------------------------------------------------------------------------
    def start(
        self, job: dict[str, Any], *, fingerprint: str, overwrite: bool = False
    ) -> dict[str, list[tuple[int, int]]]:
        """Prepares the output location; returns the committed frame ranges per video.

        Raises :class:`sinks.policy.OutputConflictError` if it holds a job whose fingerprint
        differs, unless ``overwrite`` (which deletes the old output first).
        """
        try:
            prepare_output(self.layout, self.reader, fingerprint=fingerprint, overwrite=overwrite)
            self.writer.write_job({**job, "fingerprint": fingerprint, "status": "running"})
            return self.reader.committed_ranges()
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{self.location}: cannot write the output here ({one_line(exc)})") from None

    # -- write ---------------------------------------------------------------------------
    def write(
        self, shard_id: str, table: pa.Table, segments: Sequence[SegmentRange],
        inputs: dict[str, dict[str, Any]] | None = None,
    ) -> str:
        """Commits one shard's rows atomically; ``segments`` are its ``(video, first, last)``,
        ``inputs`` the identities of its videos' files (:data:`sinks.layout.INPUTS_KEY`).

        Returns the committed file's path on the store's filesystem."""
        return self.writer.write_shard(shard_id, table, segments, inputs)

    def drop_videos(self, path: str, videos: set[str]) -> int:
        """Removes ``videos``' rows from committed shard file ``path`` atomically (the file goes
        when nothing else is left); returns the rows dropped."""
        return self.writer.drop_videos(path, videos)

    def replace_part(self, path: str, table: pa.Table) -> None:
        """Rewrites a committed shard file atomically, keeping its segments (:meth:`OutputWriter.replace_part`)."""
        self.writer.replace_part(path, table)

    def write_tracks(self, table: pa.Table) -> None:
        """Writes ``tracks.parquet`` (TRACKS_SCHEMA) atomically."""
        self.writer.write_tracks(table)

    # -- commit --------------------------------------------------------------------------
    def commit(self, videos: list[dict[str, Any]], job: dict[str, Any]) -> None:
        """Writes ``videos.parquet`` and the final ``job.json``."""
        self.writer.write_videos(videos)
        self.writer.write_job(job)

    # -- read ----------------------------------------------------------------------------
    def committed_ranges(self) -> dict[str, list[tuple[int, int]]]:
        """``{video: [(first_frame, last_frame), ...]}`` over every committed shard file."""
        return self.reader.committed_ranges()

    def part_segments(self) -> list[tuple[str, list[SegmentRange]]]:
        """Every committed shard file with its ``(video, first_frame, last_frame)`` segments."""
        return self.reader.part_segments()

    def part_inputs(self) -> list[tuple[str, dict[str, dict[str, Any]]]]:
        """Every committed shard file with its videos' file identities (:meth:`OutputReader.part_inputs`)."""
        return self.reader.part_inputs()

    def read_part(self, path: str) -> pa.Table:
        """A committed shard file's rows (FRAMES_SCHEMA, without its metadata)."""
        return self.reader.read_part(path)

    def frame_totals(self) -> dict[str, dict[str, int]]:
        """Per video: committed ``frames``, ``faces``, ``masked``, ``unmasked``."""
        return self.reader.frame_totals()

    def read_tracks(self, columns: list[str] | None = None) -> pa.Table | None:
        """The committed ``tracks.parquet``, or None when there is none yet."""
        return self.reader.read_tracks(columns)
