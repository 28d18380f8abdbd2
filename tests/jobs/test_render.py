"""``maskjobs run --annotate``: the annotated MP4s decode, and their boxes are where the rows say."""

from __future__ import annotations

import json

import decord
import imageio_ffmpeg
import numpy as np
import pandas as pd

from jobs.render import MASK_RGB, NOMASK_RGB
from tests.jobs.conftest import WalkSet


def _edge_points(d: dict, n: int = 5) -> list[tuple[int, int]]:
    """Points (x, y) along the four edges of a detection's box, away from the corners."""
    x1, y1, x2, y2 = (int(round(d[k])) for k in ("x1", "y1", "x2", "y2"))
    ts = np.linspace(0.25, 0.75, n)
    pts = [(x1, round(y1 + t * (y2 - y1))) for t in ts] + [(x2, round(y1 + t * (y2 - y1))) for t in ts]
    pts += [(round(x1 + t * (x2 - x1)), y2) for t in ts]  # the top edge may be under the label
    return pts


def test_annotated_videos_are_browser_playable_h264_of_every_sampled_frame(walk_set: WalkSet) -> None:
    videos = pd.read_parquet(walk_set.out / "videos.parquet").set_index("video")
    manifest = json.loads((walk_set.out / "annotated" / "manifest.json").read_text())
    assert set(manifest) == set(walk_set.scenes)
    for video in walk_set.scenes:
        path = walk_set.out / "annotated" / manifest[video]["file"]
        assert path.name == f"{video}.mp4"
        reader = decord.VideoReader(str(path))
        assert len(reader) == videos.loc[video, "frames_processed"] == manifest[video]["frames"]
        assert reader[0].shape == (videos.loc[video, "height"], videos.loc[video, "width"], 3)
        assert abs(reader.get_avg_fps() - 25) < 0.01
        meta = next(imageio_ffmpeg.read_frames(str(path)))
        assert meta["codec"].startswith("h264") and meta["pix_fmt"].startswith("yuv420p")
        data = path.read_bytes()
        assert 0 < data.find(b"moov") < data.find(b"mdat")  # faststart: playable while downloading


def test_boxes_are_drawn_where_the_rows_say(walk_set: WalkSet) -> None:
    frames = pd.read_parquet(walk_set.out / "frames")
    walk = frames[frames.video == "b_walk.mp4"].set_index("frame").sort_index()
    annotated = decord.VideoReader(str(walk_set.out / "annotated" / "b_walk.mp4.mp4"))
    source = decord.VideoReader(str(walk_set.root / "b_walk.mp4"))
    checked = 0
    for pos in range(0, len(walk), 17):
        frame = int(walk.index[pos])
        drawn = annotated[pos].asnumpy().astype(int)
        plain = source[frame].asnumpy().astype(int)
        for d in walk.loc[frame, "detections"]:
            colour = np.array(MASK_RGB if d["label"] == "Mask" else NOMASK_RGB)
            other = np.array(NOMASK_RGB if d["label"] == "Mask" else MASK_RGB)
            for x, y in _edge_points(d):
                assert np.abs(drawn[y, x] - colour).max() < 80, (frame, d, (x, y), drawn[y, x])
                assert np.abs(drawn[y, x] - other).max() > 120
                assert np.abs(plain[y, x] - colour).max() > 60  # the source is not already that colour there
                checked += 1
            # inside the box, away from the edges and the label: the source picture, not paint
            cx, cy = round((d["x1"] + d["x2"]) / 2), round((d["y1"] * 0.3 + d["y2"] * 0.7))
            assert np.abs(drawn[cy, cx] - plain[cy, cx]).max() < 40
    assert checked >= 8 * 2 * 15
