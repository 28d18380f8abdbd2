"""Where each file of one output location lives, on its pyarrow filesystem.

Layout of an output location (a local directory, or any URI pyarrow's filesystems
understand: ``file:///...``, ``s3://bucket/prefix``, ``gs://...``, ``hdfs://...``)::

    OUT/frames/part-<shard>.parquet   one file per committed shard (a Parquet dataset)
    OUT/videos.parquet                one row per input video, written at the end
    OUT/job.json                      resolved config, weights' SHA-256, versions, times
    OUT/tracks.parquet                one row per tracked person, written at the end
    OUT/zones/                        per-zone and per-line results (``maskjobs zones``, ``run --zones``)
    OUT/annotated/                    annotated MP4s (``maskjobs run --annotate``; local paths only)
    OUT/report.html                   ``maskjobs report``'s page (derived: cleared with the output)
    OUT/quarantine/                   committed files found unreadable, set aside (their frames are redone)

Each shard file's Parquet metadata lists, under :data:`SEGMENTS_KEY`, the frame ranges of
the segments it holds (JSON ``[[video, first_frame, last_frame], ...]``), and under
:data:`INPUTS_KEY` the identity of each of its videos' files when it was decoded and how its
frames were numbered (JSON ``{video: {"size": .., "mtime_ns": .., "content_hash": .., "reader": ..}}``;
``reader`` alone for a file with no identity, a bucket's; absent in files written before it).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pyarrow.fs as pafs

from sinks.location import display_location, open_location

SEGMENTS_KEY = b"maskjobs.segments"
INPUTS_KEY = b"maskjobs.inputs"
REPORT_NAME = "report.html"  # written by ``maskjobs report`` beside the output: derived, cleared with it

class SegmentRange(NamedTuple):
    """The first and last sampled frame of one video's segment in a committed shard file.

    A tuple, so a shard's ranges sit in its Parquet footer as JSON ``[[video, first, last], ...]``.
    """

    video: str
    first: int
    last: int


@dataclass(frozen=True)
class OutputLayout:
    """One output location: its filesystem, its root there, and the paths under it.

    Attributes:
        fs: the pyarrow filesystem; root: the location's path on it (POSIX, no trailing ``/``);
        location: the location for messages (:func:`sinks.location.display_location`).
    """

    fs: pafs.FileSystem
    root: str
    location: str

    @classmethod
    def open(cls, location: str | Path, filesystem: pafs.FileSystem | None = None) -> OutputLayout:
        """``location``: a local path or a URI, or a path on ``filesystem``."""
        if filesystem is None:
            fs, root = open_location(location)
        else:
            fs, root = filesystem, str(location).rstrip("/")
        return cls(fs=fs, root=root, location=display_location(location))

    @property
    def frames_dir(self) -> str:
        return posixpath.join(self.root, "frames")

    @property
    def job_file(self) -> str:
        return posixpath.join(self.root, "job.json")

    @property
    def videos_file(self) -> str:
        return posixpath.join(self.root, "videos.parquet")

    @property
    def tracks_file(self) -> str:
        return posixpath.join(self.root, "tracks.parquet")

    @property
    def report_file(self) -> str:
        return posixpath.join(self.root, REPORT_NAME)

    @property
    def quarantine_dir(self) -> str:
        return posixpath.join(self.root, "quarantine")

    @property
    def zones_dir(self) -> str:
        """``zones/``: what ``maskjobs zones`` (or ``run --zones``) computed from the rows."""
        return posixpath.join(self.root, "zones")

    @property
    def annotated_root(self) -> str:
        return posixpath.join(self.root, "annotated")

    @property
    def annotated_dir(self) -> Path | None:
        """``annotated/`` as a local path; None on other filesystems: annotated videos are
        written by ffmpeg in Ray tasks, so only to a file system path."""
        return Path(self.root) / "annotated" if isinstance(self.fs, pafs.LocalFileSystem) else None

    def part_file(self, shard_id: str) -> str:
        """The committed file of shard ``shard_id``."""
        return posixpath.join(self.frames_dir, f"part-{shard_id}.parquet")

    def file_type(self, path: str) -> pafs.FileType:
        return self.fs.get_file_info(path).type

    def list_files(self, directory: str) -> list[str]:
        """Base names of the files directly in ``directory`` (none if it does not exist)."""
        infos = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        return sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File)
