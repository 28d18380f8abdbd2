"""Resuming over inputs that changed: the rows of a video whose file is no longer the one they
were decoded from are dropped before planning, so it is processed again from scratch.

Each committed shard file records the identity of its videos' files (:mod:`jobs.identity`).
Dropping is one atomic rewrite per shard file (:meth:`sinks.store.OutputStore.drop_videos`);
a run killed half-way leaves some old rows, which the next run finds stale and drops in turn,
before it commits anything for that video. Videos no longer among the inputs are left alone
(their rows are kept and listed as ``absent`` in ``videos.parquet``).
"""

from __future__ import annotations

import logging
from typing import Any

from jobs.identity import READER, describe_change, same_file
from sinks.store import OutputStore

logger = logging.getLogger(__name__)


def drop_changed_videos(sink: OutputStore, identities: dict[str, dict[str, Any] | None]) -> dict[str, str]:
    """Drops every committed row of the videos whose file changed since (``identities``: the
    current ones by video id); returns ``{video: how it changed}``, one warning line each."""
    changed: dict[str, str] = {}
    for path, recorded in sink.part_inputs():
        stale = {v for v, rec in recorded.items() if v in identities and not same_file(rec, identities[v])}
        for video in stale:
            changed.setdefault(video, describe_change(recorded[video], identities[video] or {}))
        if stale:
            sink.drop_videos(path, stale)
    for video, how in sorted(changed.items()):
        logger.warning("%s: changed since its rows were committed (%s); processing it again from scratch",
                       video, how)
    return changed


def drop_misread_videos(sink: OutputStore, copied: set[str]) -> set[str]:
    """Drops every committed row of the ``copied`` videos (read through a Matroska copy: :mod:`jobs.remux`)
    whose rows were decoded before frames were numbered as FFmpeg shows them (no ``reader`` of
    :data:`jobs.identity.READER` recorded): a clip cut without re-encoding, a recording that
    starts mid-GOP or ``.ts`` files joined end to end had rows for other frames then (frames an
    edit list hides, packets no decoder shows, a second clock). Returns the videos dropped,
    one warning line each; their files are unchanged, so :func:`drop_changed_videos` keeps them."""
    dropped: set[str] = set()
    if not copied:
        return dropped
    inputs = dict(sink.part_inputs())  # empty for shard files written before identities were
    for path, segments in sink.part_segments():
        recorded = inputs.get(path, {})
        stale = {seg[0] for seg in segments if seg[0] in copied}
        stale = {v for v in stale if (recorded.get(v) or {}).get("reader", 1) < READER}
        if stale:
            sink.drop_videos(path, stale)
            dropped |= stale
    for video in sorted(dropped):
        logger.warning("%s: its rows were decoded by an earlier version that numbered this file's frames "
                       "otherwise than FFmpeg; processing it again from scratch", video)
    return dropped
