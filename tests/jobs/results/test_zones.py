"""Zones and lines from the rows (:mod:`jobs.results.zones`): geometry, the per-zone tables,
the poster-outside-every-zone rule and known line crossings, on synthetic detections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jobs.errors import InputError
from jobs.results.zones import (
    LEFT_TO_RIGHT, RIGHT_TO_LEFT, CameraZones, ZonesSpec, compute, crossings, inside, load_zones,
)


def test_point_in_polygon_matches_a_loop_on_a_concave_polygon() -> None:
    polygon = np.array([[0, 0], [10, 0], [10, 10], [5, 4], [0, 10]], float)  # a notch from the top
    rng = np.random.default_rng(0)
    points = rng.uniform(-2, 12, size=(5000, 2))

    def slow(p: np.ndarray) -> bool:
        n, hit = len(polygon), False
        for i in range(n):
            (x1, y1), (x2, y2) = polygon[i], polygon[(i + 1) % n]
            if (y1 > p[1]) != (y2 > p[1]) and p[0] < x1 + (p[1] - y1) * (x2 - x1) / (y2 - y1):
                hit = not hit
        return hit

    got = inside(points, polygon, chunk=777)  # several chunks
    assert np.array_equal(got, [slow(p) for p in points])
    assert inside(np.array([[5, 8]]), polygon)[0] == np.False_  # in the notch
    assert inside(np.array([[5, 2]]), polygon)[0] == np.True_


def test_crossings_need_the_step_to_pass_between_the_ends() -> None:
    line = np.array([[5.0, 0.0], [5.0, 10.0]])  # pointing down the picture
    p0 = np.array([[4, 5], [6, 5], [4, 15], [4, 5], [1, 1]], float)
    p1 = np.array([[6, 5], [4, 5], [6, 15], [4.5, 6], [2, 2]], float)
    # looking from A (top) to B (bottom), x > 5 is on the left
    assert crossings(p0, p1, line).tolist() == [-1, 1, 0, 0, 0]


def test_load_zones_checks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "zones.yaml"
    path.write_text("interval: 15min\ncameras:\n  north:\n    coordinates: relative\n    zones:\n"
                    "      door: [[0, 0], [0.5, 0], [0.5, 1]]\n    lines:\n      gate: [[0.5, 0], [0.5, 1]]\n")
    spec = load_zones(path)
    assert spec.interval == "15min" and spec.cameras["north"].relative
    assert spec.cameras["north"].zones["door"].shape == (3, 2)
    for text, cause in [
        ("cameras:\n  n:\n    zones:\n      a: [[0, 0], [1, 1]]\n", "expected at least 3 [x, y] points"),
        ("cameras:\n  n:\n    coordinates: relative\n    lines:\n      a: [[0, 0], [2, 1]]\n", "within 0..1"),
        ("cameras:\n  n:\n    lines:\n      a: [[0, 0], [1, 1], [2, 2]]\n", "expected 2 [x, y] points"),
        ("zones: {}\n", "non-empty 'cameras:'"),
        ("interval: soon\ncameras:\n  n:\n    lines:\n      a: [[0, 0], [1, 1]]\n", "not a positive duration"),
        ("cameras: [\n", "not valid YAML"),
    ]:
        path.write_text(text)
        with pytest.raises(InputError) as info:
            load_zones(path)
        assert str(info.value).startswith(str(path)) and cause in str(info.value), str(info.value)
    with pytest.raises(InputError, match="cannot read"):
        load_zones(tmp_path / "missing.yaml")


def _rows() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Camera ``hall`` (100x100 px, starts 08:59:00 UTC): frames every 10 s for 3 minutes; track 1
    (NoMask) walks left to right across x = 50 along y = 20; track 2 (Mask) stands at (80, 80);
    a poster (no track, NoMask) at (10, 90) in every frame. Camera ``yard`` has no zones."""
    times = np.arange(0, 180, 10.0)
    frames = pd.DataFrame({"video": "hall/a.mp4", "frame": (times * 25).astype(int), "time_s": times})
    rows = []
    for i, t in enumerate(times):
        rows.append(("hall/a.mp4", int(t * 25), t, "NoMask", 1, 10 + i * 5.0, 20.0))
        rows.append(("hall/a.mp4", int(t * 25), t, "Mask", 2, 80.0, 80.0))
        rows.append(("hall/a.mp4", int(t * 25), t, "NoMask", -1, 10.0, 90.0))
    frames = pd.concat([frames, pd.DataFrame({"video": "yard/b.mp4", "frame": [0, 1], "time_s": [0.0, 0.04]})])
    rows.append(("yard/b.mp4", 0, 0.0, "NoMask", -1, 5.0, 5.0))
    dets = pd.DataFrame(rows, columns=["video", "frame", "time_s", "label", "track", "cx", "cy"])
    videos = pd.DataFrame({
        "video": ["hall/a.mp4", "yard/b.mp4"], "camera": ["hall", "yard"], "width": [100, 100],
        "height": [100, 100], "start": [pd.Timestamp("2026-03-16T08:59:00Z"), pd.NaT], "timezone": ["UTC", None],
    })
    tracks = pd.DataFrame({"video": ["hall/a.mp4"] * 2, "track": [1, 2], "label": ["NoMask", "Mask"]})
    return frames.reset_index(drop=True), dets, videos, tracks


def test_zone_tables_and_the_poster_outside_every_zone() -> None:
    frames, dets, videos, tracks = _rows()
    spec = ZonesSpec("1min", {"hall": CameraZones(
        relative=True,
        zones={"left": np.array([[0, 0], [0.5, 0], [0.5, 0.5], [0, 0.5]]),
               "desk": np.array([[0.6, 0.6], [1, 0.6], [1, 1], [0.6, 1]])},
        lines={"middle": np.array([[0.5, 0], [0.5, 1]])},
    )})
    out = compute(frames, dets, videos, tracks, spec)

    cams = out["cameras"].set_index(["camera", "start_s"])
    hall = cams.loc["hall"]
    # the poster is in no zone of a camera that has zones: it never counts, nor does track 1 once
    # it has left the zone "left" (from t = 80 s); the masked person at the desk always does
    assert hall.faces_outside.sum() == 18 + 10
    assert hall.faces.sum() == 8 + 18 and hall.masked.sum() == 18
    # intervals are clock-aligned: 08:59:00, 09:00:00, 09:01:00 (start_s 0, 60, 120)
    assert list(hall.index) == [0.0, 60.0, 120.0]
    assert list(pd.to_datetime(hall.start).dt.strftime("%H:%M")) == ["08:59", "09:00", "09:01"]
    # yard has no zones: its face counts although it is outside every zone of another camera
    yard = out["cameras"][out["cameras"].camera == "yard"]
    assert yard.faces.sum() == 1 and yard.faces_outside.sum() == 0 and yard.start.isna().all()

    left = out["intervals"][out["intervals"].zone == "left"]
    # track 1 is left of x = 50 until t = 80 s (x = 10 + 5 * 8 = 50 is not inside)
    assert left.faces.sum() == 8 and left.people.sum() == 2 and left.people_unmasked.sum() == 2
    assert left.set_index("start_s").faces.to_dict() == {0.0: 6, 60.0: 2, 120.0: 0}
    assert out["intervals"][out["intervals"].zone == "desk"].compliance.dropna().eq(1.0).all()

    people = out["people"].set_index(["zone", "track"])
    assert people.loc[("left", 1)].entry_label == "NoMask" and people.loc[("left", 1)].left_s == 70.0
    assert str(people.loc[("left", 1)].entered) == "2026-03-16 08:59:00+00:00"
    assert people.loc[("desk", 2)].label == "Mask"

    cross = out["crossings"]
    assert len(cross) == 1 and cross.iloc[0].track == 1 and cross.iloc[0].direction == RIGHT_TO_LEFT
    assert cross.iloc[0].time_s == 80.0  # its first detection at x >= 50
    lines = out["lines"]
    assert lines.crossings.sum() == 1 and lines.unmasked.sum() == 1


def test_crossings_in_both_directions() -> None:
    frames, dets, videos, tracks = _rows()
    back = dets[dets.track == 1].assign(track=3, cx=lambda d: 105 - d.cx)  # the same walk, right to left
    dets = pd.concat([dets, back], ignore_index=True)
    tracks = pd.concat([tracks, pd.DataFrame({"video": ["hall/a.mp4"], "track": [3], "label": ["Mask"]})])
    spec = ZonesSpec("1h", {"hall": CameraZones(False, {}, {"middle": np.array([[50.0, 0], [50.0, 100]])})})
    out = compute(frames, dets, videos, tracks, spec)
    got = out["lines"].groupby("direction")[["crossings", "unmasked"]].sum()
    assert got.loc[RIGHT_TO_LEFT].tolist() == [1, 1] and got.loc[LEFT_TO_RIGHT].tolist() == [1, 0]
    # no zones on this camera: every face counts
    assert out["cameras"].faces_outside.sum() == 0 and out["intervals"].empty
