"""Whether a run may use an output location, and preparing it: resume, overwrite or refuse.

An output holds one job's results. A rerun with the same result fingerprint (config and
weights, :meth:`jobs.config.JobConfig.result_fingerprint`) resumes it: the shards already
committed are kept and only the rest is planned. Another fingerprint is refused with
:class:`OutputConflictError` unless ``overwrite``, which first clears what maskjobs wrote there
(and only that: a user's own files in the folder are kept). A location holding maskjobs'
file names without a maskjobs ``job.json`` is not a maskjobs output and is never cleared; an
output another running job holds is refused before this (:mod:`sinks.lease`).
"""

from __future__ import annotations

import pyarrow.fs as pafs

from detector.errors import InputError
from sinks.atomic import make_dirs, sweep
from sinks.layout import OutputLayout
from sinks.quarantine import quarantine_unreadable_parts
from sinks.reader import OutputReader


class OutputConflictError(InputError):
    """The output location holds a job with another config."""


def prepare_output(layout: OutputLayout, reader: OutputReader, *, fingerprint: str, overwrite: bool) -> None:
    """Checks that a job with ``fingerprint`` may write to ``layout``, clears it for ``overwrite``,
    creates ``frames/`` and removes the files a killed writer left aside there and at the root.

    Raises :class:`OutputConflictError` for an output of another job, :class:`InputError` for a
    location that is a file or whose ``job.json`` is unreadable.
    """
    if layout.file_type(layout.root) == pafs.FileType.File:
        raise InputError(f"{layout.location}: the output path exists and is not a directory")
    previous = reader.read_job()
    if previous is not None and previous.get("fingerprint") != fingerprint:
        if not overwrite:
            raise OutputConflictError(
                f"{layout.location}: holds the output of a job with a different config; "
                "use --overwrite to replace it or choose another --out"
            )
    if previous is not None and "fingerprint" not in previous:
        raise OutputConflictError(f"{layout.location}: its job.json is not a maskjobs job's; choose another --out")
    if previous is None and (reader.parts() or _written_by_maskjobs(layout)):
        # maskjobs writes job.json before anything else: these files are someone else's, --overwrite or not
        raise OutputConflictError(
            f"{layout.location}: holds frames/, videos.parquet or tracks.parquet but no job.json: "
            "not a maskjobs output; choose another --out"
        )
    if overwrite:
        _clear(layout)
    make_dirs(layout.frames_dir, fs=layout.fs)  # owner only where local (sinks.atomic)
    # this run owns the location from here on: whatever is still written aside is a killed writer's
    sweep(layout.frames_dir, fs=layout.fs)
    sweep(layout.root, fs=layout.fs)
    quarantine_unreadable_parts(layout, reader.parts())  # a damaged file costs only its own frames


def _written_by_maskjobs(layout: OutputLayout) -> bool:
    """Whether a file maskjobs writes at the end (or its annotated videos' folder) exists."""
    return any(
        layout.file_type(path) != pafs.FileType.NotFound
        for path in (layout.videos_file, layout.tracks_file, layout.annotated_root)
    )


def _clear(layout: OutputLayout) -> None:
    """Deletes everything maskjobs writes under ``layout``, the report derived from it included."""
    fs = layout.fs
    for folder in (layout.frames_dir, layout.annotated_root, layout.quarantine_dir, layout.zones_dir):
        if layout.file_type(folder) == pafs.FileType.Directory:
            fs.delete_dir(folder)
    for path in (layout.videos_file, layout.job_file, layout.tracks_file, layout.report_file):
        if layout.file_type(path) == pafs.FileType.File:
            fs.delete_file(path)
