"""Writing an output location: shard commits, rewritten shards, ``videos.parquet``,
``tracks.parquet`` and ``job.json``, each file atomically (:func:`sinks.atomic.atomic_write`).

A shard's file is committed once: a retried shard writes the same ``part-<shard>.parquet``
again, replacing it whole, so its rows are in the output exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sinks.atomic import atomic_write, make_dirs
from sinks.layout import INPUTS_KEY, SEGMENTS_KEY, OutputLayout, SegmentRange
from sinks.schema import FRAMES_SCHEMA, TRACKS_SCHEMA, VIDEOS_SCHEMA


class OutputWriter:
    """Writes the files of one output location; each one appears whole or not at all."""

    def __init__(self, layout: OutputLayout) -> None:
        self.layout = layout

    def _write_table(self, path: str, table: pa.Table) -> None:
        atomic_write(self.layout.fs, path, lambda f: pq.write_table(table, f, compression="zstd"))

    def write_shard(
        self, shard_id: str, table: pa.Table, segments: Sequence[SegmentRange],
        inputs: dict[str, dict[str, Any]] | None = None,
    ) -> str:
        """Commits one shard's rows (FRAMES_SCHEMA) with its ``(video, first, last)`` segments
        and, where known, the identity of each video's file (``inputs``, see :data:`INPUTS_KEY`).

        Returns the committed file's path on the layout's filesystem."""
        if table.schema.remove_metadata() != FRAMES_SCHEMA:
            raise ValueError("frames table does not match FRAMES_SCHEMA")
        meta = {SEGMENTS_KEY: json.dumps(segments).encode()}
        if inputs:
            meta[INPUTS_KEY] = json.dumps(inputs, sort_keys=True).encode()
        table = table.replace_schema_metadata(meta)
        path = self.layout.part_file(shard_id)
        self._write_table(path, table)
        return path

    def replace_part(self, path: str, table: pa.Table) -> None:
        """Rewrites a committed shard file with ``table`` (the same rows with more filled in,
        e.g. track ids), keeping its segments."""
        meta = pq.read_schema(path, filesystem=self.layout.fs).metadata
        if table.schema.remove_metadata() != FRAMES_SCHEMA:
            raise ValueError("frames table does not match FRAMES_SCHEMA")
        self._write_table(path, table.replace_schema_metadata(meta))

    def drop_videos(self, path: str, videos: set[str]) -> int:
        """Rewrites committed shard file ``path`` without the rows, segments and identities of
        ``videos`` (atomically), or deletes it when nothing else is left; returns rows dropped."""
        table = pq.read_table(path, filesystem=self.layout.fs)
        meta = dict(table.schema.metadata or {})
        keep = pc.invert(pc.is_in(table.column("video"), value_set=pa.array(sorted(videos), pa.string())))
        kept = table.filter(keep)
        if len(kept) == 0:
            self.layout.fs.delete_file(path)
            return len(table)
        segments = [s for s in json.loads(meta.get(SEGMENTS_KEY, b"[]")) if s[0] not in videos]
        meta[SEGMENTS_KEY] = json.dumps(segments).encode()
        if INPUTS_KEY in meta:
            inputs = {k: v for k, v in json.loads(meta[INPUTS_KEY]).items() if k not in videos}
            meta[INPUTS_KEY] = json.dumps(inputs, sort_keys=True).encode()
        self._write_table(path, kept.replace_schema_metadata(meta))
        return len(table) - len(kept)

    def write_videos(self, videos: list[dict[str, Any]]) -> None:
        """Writes ``videos.parquet``: one VIDEOS_SCHEMA row per input video."""
        self._write_table(self.layout.videos_file, pa.Table.from_pylist(videos, schema=VIDEOS_SCHEMA))

    def write_tracks(self, table: pa.Table) -> None:
        """Writes ``tracks.parquet`` (TRACKS_SCHEMA)."""
        if table.schema.remove_metadata() != TRACKS_SCHEMA:
            raise ValueError("tracks table does not match TRACKS_SCHEMA")
        self._write_table(self.layout.tracks_file, table)

    def write_job(self, job: dict[str, Any]) -> None:
        """Writes ``job.json`` (indented, keys sorted; values JSON cannot hold as their ``str``)."""
        make_dirs(self.layout.root, fs=self.layout.fs)  # owner only where local (sinks.atomic)
        data = json.dumps(job, indent=2, sort_keys=True, default=str).encode()
        atomic_write(self.layout.fs, self.layout.job_file, lambda f: f.write(data))
