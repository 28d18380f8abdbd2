"""``annotated/manifest.json``: which annotated video was drawn from which committed rows.

``{video: {"file": "<video>.mp4", "digest": "<rows' digest>", "frames": n}}``. A manifest that
cannot be read (empty, cut short, edited by hand) costs only a redraw: :func:`read_manifest`
sets it aside as ``manifest.json.corrupt-<UTC time>`` with one warning line and reads it as
empty, so every annotated video is drawn again; an entry that is not of that shape is dropped
alone.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any

from jobs.errors import one_line

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def _valid(entry: Any) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("digest"), str)


def read_manifest(folder: Path, *, set_aside: bool) -> dict[str, dict[str, Any]]:
    """The entries of ``folder/manifest.json`` (none if there is no such file).

    An unreadable manifest is one warning line and no entries; with ``set_aside`` (a run, which
    rewrites it) it is also moved aside, so the next reader does not meet it again.
    """
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
    except (OSError, ValueError) as exc:
        cause = one_line(exc, limit=200)
        if set_aside:
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            aside = path.with_name(f"{MANIFEST}.corrupt-{stamp}")
            os.replace(path, aside)
            logger.warning("%s: unreadable (%s); moved to %s, the annotated videos are drawn again",
                           path, cause, aside.name)
        else:
            logger.warning("%s: unreadable (%s); the annotated videos are not linked", path, cause)
        return {}
    return {str(k): v for k, v in data.items() if _valid(v)}
