"""The job's Parquet output, with a start / write / commit lifecycle and exactly-once shards.

Layout of an output location (a local directory, or any URI pyarrow's filesystems
understand: ``file:///...``, ``s3://bucket/prefix``, ``gs://...``, ``hdfs://...``)::

    OUT/frames/part-<shard>.parquet   one file per committed shard (a Parquet dataset)
    OUT/videos.parquet                one row per input video, written at the end
    OUT/job.json                      resolved config, weights' SHA-256, versions, times
    OUT/tracks.parquet                one row per tracked person, written at the end
    OUT/annotated/                    annotated MP4s (``maskjobs run --annotate``; local paths only)

A shard is written aside (``frames/.tmp-*``, ignored by Parquet readers) and then moved
into place (``FileSystem.move``: a rename on a local or network-mounted file system, a
single server-side copy on an object store, where the final object appears whole or not
at all), so a reader never sees a partial file. Each file's metadata lists the frame
ranges of the segments it holds; :meth:`FrameSink.start` reads them back so a rerun
plans only what is not committed yet.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from detector.errors import InputError, one_line
from sinks.schema import FRAMES_SCHEMA, TRACKS_SCHEMA, VIDEOS_SCHEMA

logger = logging.getLogger(__name__)

_SEGMENTS_KEY = b"maskjobs.segments"
_TMP_PREFIX = ".tmp-"
REPORT_NAME = "report.html"  # written by ``maskjobs report`` beside the output: derived, cleared with it


class OutputConflictError(InputError):
    """The output location holds a job with another config."""


def is_uri(location: str) -> bool:
    """``scheme://...``: a location for pyarrow's filesystems rather than a local path."""
    head, sep, _ = location.partition("://")
    return bool(sep) and head.isascii() and head.replace("+", "").isalnum() and len(head) > 1


def display_location(location: str | Path) -> str:
    """The location for messages and records: a URI without its credentials or query."""
    text = str(location)
    if not is_uri(text):
        return text
    scheme, rest = text.split("://", 1)
    netloc, sep, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{sep}{path.split('?', 1)[0]}"


def open_location(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of an output location: a local path or a pyarrow URI."""
    text = str(location)
    if not is_uri(text):
        return pafs.LocalFileSystem(), Path(text).absolute().as_posix()
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, ValueError) as exc:
        raise InputError(
            f"{display_location(text)}: not an output location pyarrow can open ({one_line(exc)})"
        ) from None
    return fs, path.rstrip("/")


class FrameSink:
    """Writes a job's output under ``location``: a local path or a URI, or a path on ``filesystem``."""

    def __init__(self, location: str | Path, filesystem: pafs.FileSystem | None = None) -> None:
        self.location = display_location(location)
        if filesystem is None:
            self.fs, self.root = open_location(location)
        else:
            self.fs, self.root = filesystem, str(location).rstrip("/")
        self.frames_dir = posixpath.join(self.root, "frames")
        self.job_file = posixpath.join(self.root, "job.json")
        self.videos_file = posixpath.join(self.root, "videos.parquet")
        self.tracks_file = posixpath.join(self.root, "tracks.parquet")
        # Annotated videos are written by ffmpeg in Ray tasks, so only to a file system path.
        self.annotated_dir: Path | None = (
            Path(self.root) / "annotated" if isinstance(self.fs, pafs.LocalFileSystem) else None
        )

    # -- file system helpers -------------------------------------------------------------
    def _type(self, path: str) -> pafs.FileType:
        return self.fs.get_file_info(path).type

    def _list(self, directory: str) -> list[str]:
        """Base names of the files directly in ``directory`` (none if it does not exist)."""
        infos = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        return sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File)

    def _parts(self) -> list[str]:
        return [
            posixpath.join(self.frames_dir, name)
            for name in self._list(self.frames_dir)
            if name.startswith("part-") and name.endswith(".parquet")
        ]

    def _write_atomic(self, path: str, write: Callable[[BinaryIO], None]) -> None:
        """Writes ``path`` aside, then moves it into place; a reader sees all of it or nothing."""
        tmp = posixpath.join(posixpath.dirname(path), f"{_TMP_PREFIX}{uuid.uuid4().hex}-{posixpath.basename(path)}")
        try:
            if isinstance(self.fs, pafs.LocalFileSystem):
                with open(tmp, "wb") as f:  # local: fsync before the rename, so a crash leaves no empty file
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                with self.fs.open_output_stream(tmp) as f:
                    write(f)
            self.fs.move(tmp, path)
        except BaseException:
            self._delete_quietly(tmp)
            raise

    def _delete_quietly(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except (OSError, pa.ArrowException):
            pass

    def _write_bytes(self, path: str, data: bytes) -> None:
        self._write_atomic(path, lambda f: f.write(data))

    def _write_table(self, path: str, table: pa.Table) -> None:
        self._write_atomic(path, lambda f: pq.write_table(table, f, compression="zstd"))

    # -- start ---------------------------------------------------------------------------
    def start(
        self, job: dict[str, Any], *, fingerprint: str, overwrite: bool = False
    ) -> dict[str, list[tuple[int, int]]]:
        """Prepares the output location; returns the committed frame ranges per video.

        Raises :class:`OutputConflictError` if it holds a job whose fingerprint differs,
        unless ``overwrite`` (which deletes the old output first).
        """
        try:
            return self._start(job, fingerprint=fingerprint, overwrite=overwrite)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{self.location}: cannot write the output here ({one_line(exc)})") from None

    def _start(self, job: dict[str, Any], *, fingerprint: str, overwrite: bool) -> dict[str, list[tuple[int, int]]]:
        if self._type(self.root) == pafs.FileType.File:
            raise InputError(f"{self.location}: the output path exists and is not a directory")
        previous = self._read_job()
        if previous is not None and previous.get("fingerprint") != fingerprint:
            if not overwrite:
                raise OutputConflictError(
                    f"{self.location}: holds the output of a job with a different config; "
                    "use --overwrite to replace it or choose another --out"
                )
        if overwrite:
            self._clear()
        elif previous is None and self._parts():
            raise OutputConflictError(f"{self.location}: holds Parquet files but no job.json; use --overwrite")
        self.fs.create_dir(self.frames_dir, recursive=True)
        for name in self._list(self.frames_dir):
            if name.startswith(_TMP_PREFIX):
                self._delete_quietly(posixpath.join(self.frames_dir, name))
        self._write_job({**job, "fingerprint": fingerprint, "status": "running"})
        return self.committed_ranges()

    def _clear(self) -> None:
        for folder in (self.frames_dir, posixpath.join(self.root, "annotated")):
            if self._type(folder) == pafs.FileType.Directory:
                self.fs.delete_dir(folder)
        for path in (self.videos_file, self.job_file, self.tracks_file, posixpath.join(self.root, REPORT_NAME)):
            if self._type(path) == pafs.FileType.File:
                self.fs.delete_file(path)

    def _read_job(self) -> dict[str, Any] | None:
        if self._type(self.job_file) != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(self.job_file) as f:
            text = f.read()
        try:
            return json.loads(text)
        except ValueError:
            raise InputError(
                f"{self.location}/job.json: not valid JSON; use --overwrite to replace the output"
            ) from None

    def _write_job(self, job: dict[str, Any]) -> None:
        self.fs.create_dir(self.root, recursive=True)
        self._write_bytes(self.job_file, json.dumps(job, indent=2, sort_keys=True, default=str).encode())

    def committed_ranges(self) -> dict[str, list[tuple[int, int]]]:
        """``{video: [(first_frame, last_frame), ...]}`` over every committed shard file."""
        out: dict[str, list[tuple[int, int]]] = {}
        for _, segments in self.part_segments():
            for video, first, last in segments:
                out.setdefault(video, []).append((first, last))
        return out

    def part_segments(self) -> list[tuple[str, list[tuple[str, int, int]]]]:
        """Every committed shard file with its ``(video, first_frame, last_frame)`` segments."""
        out = []
        for path in self._parts():
            meta = pq.read_schema(path, filesystem=self.fs).metadata or {}
            segments = [(str(v), int(a), int(b)) for v, a, b in json.loads(meta.get(_SEGMENTS_KEY, b"[]"))]
            out.append((path, segments))
        return out

    # -- write ---------------------------------------------------------------------------
    def write(self, shard_id: str, table: pa.Table, segments: list[tuple[str, int, int]]) -> str:
        """Commits one shard's rows atomically; ``segments`` are its ``(video, first, last)``.

        Returns the committed file's path on the sink's filesystem."""
        if table.schema.remove_metadata() != FRAMES_SCHEMA:
            raise ValueError("frames table does not match FRAMES_SCHEMA")
        table = table.replace_schema_metadata({_SEGMENTS_KEY: json.dumps(segments).encode()})
        path = posixpath.join(self.frames_dir, f"part-{shard_id}.parquet")
        self._write_table(path, table)
        return path

    def read_part(self, path: str) -> pa.Table:
        """A committed shard file's rows (FRAMES_SCHEMA, without its metadata)."""
        return pq.read_table(path, filesystem=self.fs).replace_schema_metadata(None)

    def replace_part(self, path: str, table: pa.Table) -> None:
        """Rewrites a committed shard file atomically with ``table`` (the same rows with
        more filled in, e.g. track ids), keeping its segments."""
        meta = pq.read_schema(path, filesystem=self.fs).metadata
        if table.schema.remove_metadata() != FRAMES_SCHEMA:
            raise ValueError("frames table does not match FRAMES_SCHEMA")
        self._write_table(path, table.replace_schema_metadata(meta))

    # -- commit --------------------------------------------------------------------------
    def frame_totals(self) -> dict[str, dict[str, int]]:
        """Per video: committed ``frames``, ``faces``, ``masked``, ``unmasked``."""
        files = self._parts()
        if not files:
            return {}
        table = ds.dataset(files, format="parquet", filesystem=self.fs).to_table(
            columns=["video", "faces", "masked", "unmasked"]
        )
        agg = table.group_by("video").aggregate(
            [("video", "count"), ("faces", "sum"), ("masked", "sum"), ("unmasked", "sum")]
        )
        return {
            row["video"]: {
                "frames": int(row["video_count"]),
                "faces": int(row["faces_sum"] or 0),
                "masked": int(row["masked_sum"] or 0),
                "unmasked": int(row["unmasked_sum"] or 0),
            }
            for row in agg.to_pylist()
        }

    def commit(self, videos: list[dict[str, Any]], job: dict[str, Any]) -> None:
        """Writes ``videos.parquet`` and the final ``job.json``."""
        table = pa.Table.from_pylist(videos, schema=VIDEOS_SCHEMA)
        self._write_table(self.videos_file, table)
        self._write_job(job)

    def read_tracks(self, columns: list[str] | None = None) -> pa.Table | None:
        """The committed ``tracks.parquet``, or None when there is none yet."""
        if self._type(self.tracks_file) != pafs.FileType.File:
            return None
        return pq.read_table(self.tracks_file, columns=columns, filesystem=self.fs)

    def write_tracks(self, table: pa.Table) -> None:
        """Writes ``tracks.parquet`` (TRACKS_SCHEMA) atomically."""
        if table.schema.remove_metadata() != TRACKS_SCHEMA:
            raise ValueError("tracks table does not match TRACKS_SCHEMA")
        self._write_table(self.tracks_file, table)
