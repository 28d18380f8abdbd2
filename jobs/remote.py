"""Videos in object storage or behind HTTP: listing a prefix like a folder, and reading an object.

An input may be a URI: ``s3://bucket/prefix``, ``gs://...``, ``https://host/file.mp4``, or any URI
pyarrow's filesystems (or, failing those, fsspec's) open. A prefix is listed like a directory
(videos by extension, recursively); a file is taken whatever its name. Credentials come from the
environment of the process that reads, as pyarrow reads them (``AWS_*`` variables, a profile, an
instance role; ``GOOGLE_APPLICATION_CREDENTIALS`` ...); a ``key:secret@`` in a URI is accepted by
``run`` but never shown (:func:`sinks.location.display_location`, :func:`scrub`).

Workers do not read a video over the network in place: decord builds its keyframe index by
reading every packet when it opens a file, so each open of a URL reads the whole object (see
``benchmarks/bench_remote_bytes.py``). :mod:`jobs.stage` copies each object once per node into a
bounded cache instead, and decord opens the local copy.
"""

from __future__ import annotations

import logging
import posixpath
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from detector.errors import InputError, one_line
from sinks.location import display_location, is_uri

logger = logging.getLogger(__name__)

_HTTP = ("http", "https")


def scheme(location: str) -> str:
    return location.partition("://")[0].lower()


def is_remote(location: str) -> bool:
    """A URI whose bytes are not on a local file system (``file://`` is local)."""
    return is_uri(location) and scheme(location) != "file"


def local_path(location: str) -> str:
    """A ``file://`` URI's path; any other location as given."""
    if is_uri(location) and scheme(location) == "file":
        return urllib.parse.unquote(urllib.parse.urlsplit(location).path)
    return location


# -- listing ---------------------------------------------------------------------------------
def list_videos(uri: str) -> list[tuple[str, str]]:
    """``[(video id, uri), ...]`` for an input URI: a file (id: its base name) or a prefix listed
    recursively like a directory (ids: keys relative to the prefix; only video extensions).

    Raises :class:`InputError` (one line, no credentials) for a URI that cannot be opened or
    names nothing."""
    from jobs.media import VIDEO_EXTENSIONS

    shown = display_location(uri)
    if scheme(uri) in _HTTP:
        check_http(uri)
        return [(posixpath.basename(urllib.parse.urlsplit(uri).path) or shown, uri)]
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        fs, path = filesystem(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [(posixpath.basename(path), uri)]
        if info.type != pafs.FileType.Directory:
            raise InputError(f"{shown}: no such file or prefix")
        infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True))
    except (OSError, pa.ArrowException, ValueError, ImportError) as exc:
        raise InputError(f"{shown}: cannot list it ({_clean(one_line(exc), uri)})") from None
    base, _, query = uri.partition("?")
    base = base.rstrip("/")
    found = []
    for item in infos:
        if item.type != pafs.FileType.File or posixpath.splitext(item.path)[1].lower() not in VIDEO_EXTENSIONS:
            continue
        rel = posixpath.relpath(item.path, path.rstrip("/"))
        child = f"{base}/{urllib.parse.quote(rel, safe='/')}" + (f"?{query}" if query else "")
        found.append((rel, child))
    return sorted(found)


def filesystem(uri: str) -> tuple[Any, str]:
    """pyarrow's filesystem for ``uri``, else fsspec's wrapped as one; and the path on it."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, ValueError):
        import fsspec  # a scheme pyarrow does not know: fsspec's registry (az://, http listings ...)

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def check_http(url: str) -> None:
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=30):
            pass
    except urllib.error.HTTPError as exc:
        raise InputError(f"{display_location(url)}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise InputError(f"{display_location(url)}: cannot reach it ({one_line(exc)})") from None


def scrub(text: str, uri: str) -> str:
    """``text`` with ``uri`` replaced by its display form and its credentials by ``***``."""
    return _clean(text, uri)


def _clean(text: str, uri: str) -> str:
    text = text.replace(uri, display_location(uri))
    parts = urllib.parse.urlsplit(uri)
    for secret in (parts.password, parts.username):
        if secret:
            text = text.replace(secret, "***")
    return text


def stat_object(uri: str) -> tuple[int | None, str]:
    """``(size in bytes or None, version stamp)`` of the object at ``uri``: the stamp (mtime,
    ETag or Last-Modified) changes when the object does. Raises OSError-family errors."""
    if scheme(uri) in _HTTP:
        with urllib.request.urlopen(urllib.request.Request(uri, method="HEAD"), timeout=30) as resp:
            length = resp.headers.get("Content-Length")
            stamp = resp.headers.get("ETag") or resp.headers.get("Last-Modified") or ""
            return (int(length) if length else None), stamp
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError("no such object")
    return info.size, str(info.mtime_ns or info.mtime or "")


def copy_object(uri: str, sink: Any, *, chunk: int = 8 << 20) -> int:
    """Streams the object at ``uri`` into the binary file ``sink``; returns the bytes copied."""
    if scheme(uri) in _HTTP:
        source_cm: Any = urllib.request.urlopen(uri, timeout=60)
    else:
        fs, path = filesystem(uri)
        source_cm = fs.open_input_stream(path)
    copied = 0
    with source_cm as source:
        while block := source.read(chunk):
            sink.write(block)
            copied += len(block)
    return copied
