"""The job's Parquet output, with a start / write / commit lifecycle and exactly-once shards.

Layout of an output directory::

    DIR/frames/part-<shard>.parquet   one file per committed shard (a Parquet dataset)
    DIR/videos.parquet                one row per input video, written at the end
    DIR/job.json                      resolved config, weights' SHA-256, versions, times
    DIR/tracks.parquet                one row per tracked person, written at the end
    DIR/annotated/                    annotated MP4s (``maskjobs run --annotate``)

A shard is written aside (``frames/.tmp-*``, ignored by Parquet readers) and renamed into
place, so a reader never sees a partial file. Each file's metadata lists the frame
ranges of the segments it holds; :meth:`FrameSink.start` reads them back so a rerun
plans only what is not committed yet.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from detector.errors import InputError
from sinks.schema import FRAMES_SCHEMA, TRACKS_SCHEMA, VIDEOS_SCHEMA

logger = logging.getLogger(__name__)

_SEGMENTS_KEY = b"maskjobs.segments"


class OutputConflictError(InputError):
    """The output directory holds a job with another config."""


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_table(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class FrameSink:
    """Writes a job's output under ``root``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.frames_dir = self.root / "frames"
        self.job_file = self.root / "job.json"
        self.videos_file = self.root / "videos.parquet"
        self.tracks_file = self.root / "tracks.parquet"
        self.annotated_dir = self.root / "annotated"

    # -- start ---------------------------------------------------------------------------
    def start(self, job: dict[str, Any], *, fingerprint: str, overwrite: bool = False) -> dict[str, list[tuple[int, int]]]:
        """Prepares the directory; returns the committed frame ranges per video.

        Raises :class:`OutputConflictError` if ``root`` holds a job whose fingerprint
        differs, unless ``overwrite`` (which deletes the old output first).
        """
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root}: the output path exists and is not a directory")
        previous = self._read_job()
        if previous is not None and previous.get("fingerprint") != fingerprint:
            if not overwrite:
                raise OutputConflictError(
                    f"{self.root}: holds the output of a job with a different config; "
                    "use --overwrite to replace it or choose another --out"
                )
        if overwrite:
            self._clear()
        elif previous is None and self.frames_dir.exists() and any(self.frames_dir.glob("*.parquet")):
            raise OutputConflictError(f"{self.root}: holds Parquet files but no job.json; use --overwrite")
        self.frames_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.frames_dir.glob(".tmp-*"):
            stale.unlink(missing_ok=True)
        self._write_job({**job, "fingerprint": fingerprint, "status": "running"})
        return self.committed_ranges()

    def _clear(self) -> None:
        for folder in (self.frames_dir, self.annotated_dir):
            if folder.exists():
                shutil.rmtree(folder)
        for path in (self.videos_file, self.job_file, self.tracks_file):
            path.unlink(missing_ok=True)

    def _read_job(self) -> dict[str, Any] | None:
        if not self.job_file.is_file():
            return None
        try:
            return json.loads(self.job_file.read_text())
        except ValueError:
            raise InputError(f"{self.job_file}: not valid JSON; use --overwrite to replace the output") from None

    def _write_job(self, job: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(self.job_file, json.dumps(job, indent=2, sort_keys=True, default=str).encode())

    def committed_ranges(self) -> dict[str, list[tuple[int, int]]]:
        """``{video: [(first_frame, last_frame), ...]}`` over every committed shard file."""
        out: dict[str, list[tuple[int, int]]] = {}
        for _, segments in self.part_segments():
            for video, first, last in segments:
                out.setdefault(video, []).append((first, last))
        return out

    def part_segments(self) -> list[tuple[Path, list[tuple[str, int, int]]]]:
        """Every committed shard file with its ``(video, first_frame, last_frame)`` segments."""
        out = []
        for path in sorted(self.frames_dir.glob("part-*.parquet")):
            meta = pq.read_schema(path).metadata or {}
            segments = [(str(v), int(a), int(b)) for v, a, b in json.loads(meta.get(_SEGMENTS_KEY, b"[]"))]
            out.append((path, segments))
        return out

    # -- write ---------------------------------------------------------------------------
    def write(self, shard_id: str, table: pa.Table, segments: list[tuple[str, int, int]]) -> Path:
        """Commits one shard's rows atomically; ``segments`` are its ``(video, first, last)``."""
        if table.schema.remove_metadata() != FRAMES_SCHEMA:
            raise ValueError("frames table does not match FRAMES_SCHEMA")
        table = table.replace_schema_metadata({_SEGMENTS_KEY: json.dumps(segments).encode()})
        path = self.frames_dir / f"part-{shard_id}.parquet"
        _atomic_write_table(table, path)
        return path

    def read_part(self, path: Path) -> pa.Table:
        """A committed shard file's rows (FRAMES_SCHEMA, without its metadata)."""
        return pq.read_table(path).replace_schema_metadata(None)

    def replace_part(self, path: Path, table: pa.Table) -> None:
        """Rewrites a committed shard file atomically with ``table`` (the same rows with
        more filled in, e.g. track ids), keeping its segments."""
        meta = pq.read_schema(path).metadata
        if table.schema.remove_metadata() != FRAMES_SCHEMA:
            raise ValueError("frames table does not match FRAMES_SCHEMA")
        _atomic_write_table(table.replace_schema_metadata(meta), path)

    # -- commit --------------------------------------------------------------------------
    def frame_totals(self) -> dict[str, dict[str, int]]:
        """Per video: committed ``frames``, ``faces``, ``masked``, ``unmasked``."""
        files = sorted(self.frames_dir.glob("part-*.parquet"))
        if not files:
            return {}
        table = ds.dataset([str(f) for f in files], format="parquet").to_table(
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
        _atomic_write_table(table, self.videos_file)
        self._write_job(job)

    def write_tracks(self, table: pa.Table) -> None:
        """Writes ``tracks.parquet`` (TRACKS_SCHEMA) atomically."""
        if table.schema.remove_metadata() != TRACKS_SCHEMA:
            raise ValueError("tracks table does not match TRACKS_SCHEMA")
        _atomic_write_table(table, self.tracks_file)
