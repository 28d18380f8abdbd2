"""Reading an output location back: committed shard files, their segments, totals, tracks, job.json.

Only committed files are read: files written aside (``.NAME.<random>.part``, dot-prefixed)
are never listed, so a reader sees each shard whole or not at all.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from detector.errors import InputError
from sinks.layout import INPUTS_KEY, SEGMENTS_KEY, OutputLayout, SegmentRange


class OutputReader:
    """Reads what is committed under one output location."""

    def __init__(self, layout: OutputLayout) -> None:
        self.layout = layout

    def parts(self) -> list[str]:
        """Paths of the committed shard files (``frames/part-*.parquet``), sorted."""
        frames_dir = self.layout.frames_dir
        return [
            posixpath.join(frames_dir, name)
            for name in self.layout.list_files(frames_dir)
            if name.startswith("part-") and name.endswith(".parquet")
        ]

    def read_job(self) -> dict[str, Any] | None:
        """``job.json``, or None when there is none; raises :class:`InputError` if it is not JSON."""
        fs, job_file = self.layout.fs, self.layout.job_file
        if self.layout.file_type(job_file) != pafs.FileType.File:
            return None
        with fs.open_input_stream(job_file) as f:
            text = f.read()
        try:
            return json.loads(text)
        except ValueError:
            raise InputError(
                f"{self.layout.location}/job.json: not valid JSON; use --overwrite to replace the output"
            ) from None

    def committed_ranges(self) -> dict[str, list[tuple[int, int]]]:
        """``{video: [(first_frame, last_frame), ...]}`` over every committed shard file."""
        out: dict[str, list[tuple[int, int]]] = {}
        for _, segments in self.part_segments():
            for video, first, last in segments:
                out.setdefault(video, []).append((first, last))
        return out

    def part_segments(self) -> list[tuple[str, list[SegmentRange]]]:
        """Every committed shard file with its ``(video, first_frame, last_frame)`` segments."""
        out = []
        for path in self.parts():
            meta = pq.read_schema(path, filesystem=self.layout.fs).metadata or {}
            segments = [(str(v), int(a), int(b)) for v, a, b in json.loads(meta.get(SEGMENTS_KEY, b"[]"))]
            out.append((path, segments))
        return out

    def part_inputs(self) -> list[tuple[str, dict[str, dict[str, Any]]]]:
        """Every committed shard file with the identities of its videos' files when they were
        decoded (``{video: {"size", "mtime_ns", "content_hash"}}``; empty for files written
        before identities were recorded)."""
        out = []
        for path in self.parts():
            meta = pq.read_schema(path, filesystem=self.layout.fs).metadata or {}
            out.append((path, json.loads(meta.get(INPUTS_KEY, b"{}"))))
        return out

    def read_part(self, path: str) -> pa.Table:
        """A committed shard file's rows (FRAMES_SCHEMA, without its metadata)."""
        return pq.read_table(path, filesystem=self.layout.fs).replace_schema_metadata(None)

    def frame_totals(self) -> dict[str, dict[str, int]]:
        """Per video: committed ``frames``, ``faces``, ``masked``, ``unmasked``."""
        files = self.parts()
        if not files:
            return {}
        table = ds.dataset(files, format="parquet", filesystem=self.layout.fs).to_table(
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

    def read_tracks(self, columns: list[str] | None = None) -> pa.Table | None:
        """The committed ``tracks.parquet``, or None when there is none yet."""
        tracks_file = self.layout.tracks_file
        if self.layout.file_type(tracks_file) != pafs.FileType.File:
            return None
        return pq.read_table(tracks_file, columns=columns, filesystem=self.layout.fs)
