"""Compliance by camera (and zone) and local hour of day: the report's heatmap-style table.

Hours are the local clock of each video's time zone (``videos.parquet``'s ``timezone``); frames
of videos whose start is unknown go to a column of their own ("time unknown"), never into a
guessed hour.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd

from jobs.metadata import zone

UNKNOWN = -1  # the hour of frames without a wall-clock time


def _local_hours(stamps: pd.Series, videos: pd.Series, zones: dict[str, Any]) -> np.ndarray:
    """Local hour (0..23) of each UTC ``stamps`` in its video's zone; UNKNOWN where null."""
    hours = np.full(len(stamps), UNKNOWN, np.int64)
    stamps = pd.to_datetime(stamps, utc=True)
    for video, idx in pd.Series(np.arange(len(stamps))).groupby(videos.to_numpy()).groups.items():
        pos = np.asarray(idx)
        s = stamps.iloc[pos]
        known = s.notna().to_numpy()
        if not known.any():
            continue
        tz = zones.get(video)
        local = s[known].dt.tz_convert(zone(tz) if tz else "UTC")
        hours[pos[known]] = local.dt.hour.to_numpy()
    return hours


def hourly(rows: pd.DataFrame, videos: pd.DataFrame, keys: list[str], when: str) -> pd.DataFrame:
    """Faces and masked per ``keys`` and local hour. ``rows``: video, ``keys``, ``when`` (UTC
    timestamps, null when unknown), faces, masked. Columns: keys, hour, faces, masked."""
    if rows.empty:
        return pd.DataFrame(columns=[*keys, "hour", "faces", "masked"])
    tz = dict(zip(videos.video, videos.get("timezone", pd.Series([None] * len(videos)))))
    tz = {k: (v if isinstance(v, str) and v else None) for k, v in tz.items()}
    hours = _local_hours(rows[when], rows.video, tz)
    out = rows.assign(hour=hours).groupby([*keys, "hour"], dropna=False)[["faces", "masked"]].sum().reset_index()
    return out


def _colour(c: float) -> str:
    """Red (0 %) through amber to green (100 %)."""
    hue = 120 * max(0.0, min(1.0, c))
    return f"hsl({hue:.0f},70%,{82 - 10 * c:.0f}%)"


def heatmap_html(table: pd.DataFrame, keys: list[str], *, table_id: str) -> str:
    """A table: one row per ``keys``, one column per local hour that has frames (and "time
    unknown"), each cell the compliance (masked / faces) coloured red to green."""
    if table.empty:
        return '<p class="muted">No frames.</p>'
    hours = sorted(int(h) for h in table.hour.unique())
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "".join(
        f'<th data-hour="{h}">{"time unknown" if h == UNKNOWN else f"{h:02d}h"}</th>' for h in hours)
    body = []
    for key, group in table.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        by_hour = group.set_index("hour")
        cells = []
        for h in hours:
            if h not in by_hour.index or by_hour.loc[h, "faces"] == 0:
                cells.append('<td class="empty">–</td>')
                continue
            faces, masked = int(by_hour.loc[h, "faces"]), int(by_hour.loc[h, "masked"])
            c = masked / faces
            cells.append(f'<td style="background:{_colour(c)}" data-faces="{faces}" '
                         f'title="{masked:,} of {faces:,} faces masked">{c:.0%}</td>')
        names = "".join(f"<td>{html.escape(str(k))}</td>" for k in key)
        body.append(f"<tr>{names}{''.join(cells)}</tr>")
    return (f'<table class="heatmap" id="{table_id}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')
