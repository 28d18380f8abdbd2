"""Compliance by camera and local hour (:mod:`jobs.results.heatmap`): each video's own zone,
unknown times in a column of their own."""

from __future__ import annotations

import re

import pandas as pd

from jobs.results.heatmap import UNKNOWN, heatmap_html, hourly


def test_hours_are_local_to_each_video_and_unknown_times_are_kept_apart() -> None:
    videos = pd.DataFrame({"video": ["a", "b", "c"], "timezone": ["Asia/Kolkata", "+05:30", None]})
    rows = pd.DataFrame({
        "video": ["a", "a", "b", "c"], "camera": ["x", "x", "y", "y"],
        "when": pd.to_datetime(["2026-03-16T02:45:00Z", "2026-03-16T03:31:00Z", "2026-03-16T02:30:00Z", None],
                               utc=True),
        "faces": [2, 2, 4, 1], "masked": [1, 2, 4, 0],
    })
    table = hourly(rows, videos, ["camera"], "when").set_index(["camera", "hour"])
    assert table.loc[("x", 8)].tolist() == [2, 1]  # 02:45Z is 08:15 in India
    assert table.loc[("x", 9)].tolist() == [2, 2]  # 03:31Z is 09:01 (in UTC both would be hour 2 or 3)
    assert table.loc[("y", 8)].tolist() == [4, 4] and table.loc[("y", UNKNOWN)].tolist() == [1, 0]
    page = heatmap_html(hourly(rows, videos, ["camera"], "when"), ["camera"], table_id="t")
    assert re.findall(r'data-hour="(-?\d+)"', page) == ["-1", "8", "9"]
    assert re.findall(r"<tr><td>(\w)</td>", page) == ["x", "y"] and ">50%<" in page and ">0%<" in page
