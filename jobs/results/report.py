"""Reading a job's output for people: totals, and one self-contained HTML report.

The report is a single file with inline CSS, SVG charts drawn here, a few lines of inline
JavaScript (sortable table) and base64 JPEG thumbnails: it opens without a network.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from detector.spec import MASK
from jobs.errors import InputError
from jobs.results.heatmap import heatmap_html, hourly
from jobs.results.manifest import read_manifest
from sinks.atomic import atomic_output
from sinks.layout import REPORT_NAME

logger = logging.getLogger(__name__)

CHART_BINS = 120
MAX_THUMBNAILS = 600


@dataclass(frozen=True)
class JobOutput:
    """What a report needs from ``DIR``: its videos, tracks and per-frame counts."""

    root: Path
    videos: pd.DataFrame
    tracks: pd.DataFrame
    frames: pd.DataFrame  # video, time_s, faces, masked
    job: dict[str, Any]
    annotated: dict[str, str]  # video -> file under DIR/annotated
    zones: dict[str, pd.DataFrame] = field(default_factory=dict)  # DIR/zones/<name>.parquet


def load_output(root: Path) -> JobOutput:
    """Reads ``root``; raises :class:`InputError` if it is not a finished maskjobs output."""
    videos_file = root / "videos.parquet"
    if not videos_file.is_file():
        raise InputError(f"{root}: not a maskjobs output (no videos.parquet; did `maskjobs run --out {root}` finish?)")
    videos = pd.read_parquet(videos_file)
    tracks_file = root / "tracks.parquet"
    tracks = pd.read_parquet(tracks_file) if tracks_file.is_file() else pd.DataFrame(
        columns=["video", "track", "first_s", "last_s", "label", "masked_share", "thumbnail"]
    )
    frames_dir = root / "frames"
    has_parts = frames_dir.is_dir() and any(frames_dir.glob("part-*.parquet"))
    columns = ["video", "time_s", "faces", "masked"]
    if has_parts:
        names = set(pq.read_schema(next(frames_dir.glob("part-*.parquet"))).names)
        columns += [c for c in ("camera", "timestamp") if c in names]  # absent in older outputs
    frames = pd.read_parquet(frames_dir, columns=columns) if has_parts else pd.DataFrame(columns=columns)
    job_file = root / "job.json"
    job = json.loads(job_file.read_text()) if job_file.is_file() else {}
    annotated = {v: e["file"] for v, e in read_manifest(root / "annotated", set_aside=False).items()}
    zones = {p.stem: pd.read_parquet(p) for p in sorted((root / "zones").glob("*.parquet"))}
    return JobOutput(root, videos, tracks, frames, job, annotated, zones)


def totals(out: JobOutput) -> dict[str, Any]:
    """The job's headline figures (None where undefined, e.g. compliance without faces)."""
    v = out.videos
    faces, masked = int(v.faces.sum()), int(v.masked.sum())
    people = int(v.people.fillna(0).sum()) if "people" in v else len(out.tracks)
    unmasked_people = int(v.people_unmasked.fillna(0).sum()) if "people_unmasked" in v else 0
    return {
        "videos": len(v),
        "done": int((v.status == "done").sum()),
        "partial": int((v.status == "partial").sum()),  # cut off mid-recording: frames before the damage kept
        "absent": int((v.status == "absent").sum()),  # rows of an earlier run's input, kept
        "failed": int((~v.status.isin(["done", "partial", "absent"])).sum()),
        "duration_s": float(v.duration_s.fillna(0).sum()),
        "frames": int(v.frames_processed.sum()),
        "faces": faces,
        "masked": masked,
        "unmasked": int(v.unmasked.sum()),
        "compliance": masked / faces if faces else None,
        "people": people,
        "people_unmasked": unmasked_people,
        "people_compliance": (people - unmasked_people) / people if people else None,
    }


def video_counts(t: dict[str, Any]) -> str:
    """``"3 done, 1 partial, 1 failed"`` (partial and absent only where there are some)."""
    parts = [f"{t['done']} done"]
    parts += [f"{t[k]} {k}" for k in ("partial", "absent") if t.get(k)]
    return ", ".join([*parts, f"{t['failed']} failed"])


def clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def percent(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.1%}"


def compliance_series(frames: pd.DataFrame, duration: float, max_bins: int = CHART_BINS) -> pd.DataFrame:
    """Per time bin of one video: ``start``, ``end`` (s), ``faces``, ``masked``, ``compliance``.

    At most ``max_bins`` bins, each at least two sampled frames long (no empty bins between
    sampled frames).
    """
    times = np.sort(frames.time_s.to_numpy(np.float64))
    span = max(duration, float(times[-1]) if len(times) else 0.0, 1e-6)
    step = float(np.median(np.diff(times))) if len(times) > 1 else span
    width = max(span / max_bins, 2 * step)
    bins = max(1, int(np.ceil(span / width - 1e-9)))
    idx = np.clip(np.floor(frames.time_s.to_numpy(np.float64) / width + 1e-6), 0, bins - 1).astype(np.int64)
    count = np.bincount(idx, minlength=bins)
    faces = np.bincount(idx, weights=frames.faces.to_numpy(np.float64), minlength=bins)
    masked = np.bincount(idx, weights=frames.masked.to_numpy(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        comp = np.where(faces > 0, masked / np.maximum(faces, 1), np.nan)
    start = np.arange(bins) * width
    return pd.DataFrame({
        "start": start, "end": start + width, "faces": faces, "masked": masked, "compliance": comp,
        "faces_per_frame": faces / np.maximum(count, 1),
    })


def chart_svg(series: pd.DataFrame, *, width: int = 760, height: int = 170) -> str:
    """An inline SVG: compliance (line, %) over time, faces per sampled frame as grey bars."""
    left, right, top, bottom = 44, 10, 10, 24
    pw, ph = width - left - right, height - top - bottom
    t_end = float(series.end.iloc[-1]) if len(series) else 1.0

    def x(t: float) -> float:
        return left + pw * t / t_end

    def y(c: float) -> float:
        return top + ph * (1 - c)

    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">']
    for level in (0, 0.5, 1):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(level):.1f}" y2="{y(level):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y(level) + 4:.1f}" text-anchor="end">{level:.0%}</text>')
    peak = max(float(series.faces_per_frame.max()), 1.0) if len(series) else 1.0
    for row in series.itertuples():
        if row.faces > 0:
            bh = ph * 0.35 * row.faces_per_frame / peak
            parts.append(f'<rect class="faces" x="{x(row.start):.1f}" y="{top + ph - bh:.1f}" '
                         f'width="{max(x(row.end) - x(row.start) - 0.5, 0.5):.1f}" height="{bh:.1f}"/>')
    runs: list[list[str]] = [[]]
    for row in series.itertuples():
        if np.isnan(row.compliance):
            runs.append([])
        else:
            runs[-1].append(f"{x((row.start + row.end) / 2):.1f},{y(row.compliance):.1f}")
    for run in filter(None, runs):
        if len(run) == 1:
            cx, cy = run[0].split(",")
            parts.append(f'<circle class="point" cx="{cx}" cy="{cy}" r="2.5"/>')
        else:
            parts.append(f'<polyline class="compliance" points="{" ".join(run)}"/>')
    for k in range(5):
        t = t_end * k / 4
        anchor = "start" if k == 0 else "end" if k == 4 else "middle"
        label = clock(t) if t_end >= 60 else f"{t:.1f}s"
        parts.append(f'<text x="{x(t):.1f}" y="{height - 6}" text-anchor="{anchor}">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d232b;background:#f6f7f9}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}.muted{color:#68707a}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:22px}.bad{color:#c62828}.good{color:#2e7d32}
table{border-collapse:collapse;background:#fff;width:100%}th,td{border-bottom:1px solid #e4e7eb;padding:6px 8px;text-align:right}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}th{cursor:pointer;user-select:none;background:#eef1f4}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
.video{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:10px 14px;margin:10px 0}
svg.chart{width:100%;max-width:1000px;height:auto}svg.chart text{font-size:10px;fill:#68707a}svg.chart .grid{stroke:#e4e7eb}svg.chart .faces{fill:#cfd5dc}
svg.chart .compliance{fill:none;stroke:#2e7d32;stroke-width:2}svg.chart .point{fill:#2e7d32}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:6px;width:150px}
figure img{height:128px;max-width:138px;object-fit:contain;display:block;margin:auto;background:#eee}
figcaption{font-size:12px;margin-top:4px;overflow-wrap:anywhere}
table.heatmap{width:auto}table.heatmap td,table.heatmap th{text-align:center;min-width:38px}table.heatmap td.empty{color:#aab}
h3{font-size:15px;margin:16px 0 8px}
#problems td:nth-child(3),#problems th:nth-child(3){text-align:left}
"""

_JS = """
(function(){
  var table=document.getElementById('videos');
  function sortBy(th){
    var i=Array.prototype.indexOf.call(th.parentNode.children,th);
    var dir=th.getAttribute('aria-sort')==='ascending'?'descending':'ascending';
    Array.prototype.forEach.call(th.parentNode.children,function(h){h.removeAttribute('aria-sort');});
    th.setAttribute('aria-sort',dir);
    var body=table.tBodies[0], rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var x=a.cells[i].getAttribute('data-v'), y=b.cells[i].getAttribute('data-v');
      var nx=parseFloat(x), ny=parseFloat(y), c;
      if(x===''&&y==='')c=0;else if(x==='')c=1;else if(y==='')c=-1;
      else c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;
      return dir==='ascending'?c:-c;
    });
    rows.forEach(function(r){body.appendChild(r);});
    table.setAttribute('data-sorted',th.getAttribute('data-key')+' '+dir);
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th){th.addEventListener('click',function(){sortBy(th);});});
  sortBy(table.querySelector('th[data-key=compliance]'));
})();
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _cards(t: dict[str, Any]) -> str:
    cards = [
        ("videos", f"{t['videos']}", video_counts(t), "bad" if t["failed"] or t["partial"] else ""),
        ("video time", clock(t["duration_s"]), f"{t['frames']:,} frames analysed", ""),
        ("face compliance", percent(t["compliance"]), f"{t['masked']:,} of {t['faces']:,} faces masked", ""),
        ("people", f"{t['people']:,}", "tracked across frames", ""),
        ("unmasked people", f"{t['people_unmasked']:,}", f"people compliance {percent(t['people_compliance'])}",
         "bad" if t["people_unmasked"] else "good"),
    ]
    return "".join(
        f'<div class="card"><span class="muted">{_e(k)}</span><b class="{c}">{_e(v)}</b>'
        f'<span class="muted">{_e(sub)}</span></div>'
        for k, v, sub, c in cards
    )


_COLUMNS = [
    ("video", "video"), ("status", "status"), ("camera", "camera"), ("duration", "duration_s"), ("frames", "frames_processed"),
    ("faces", "faces"), ("masked", "masked"), ("unmasked", "unmasked"), ("compliance", "compliance"),
    ("people", "people"), ("unmasked people", "people_unmasked"),
]


def _cell(key: str, value: Any) -> str:
    if key == "compliance":
        return percent(value)
    if key == "duration_s":
        return clock(value)
    return f"{int(value):,}" if isinstance(value, (int, float, np.integer)) else str(value)


def _table(videos: pd.DataFrame) -> str:
    head = "".join(f'<th data-key="{key}">{_e(name)}</th>' for name, key in _COLUMNS)
    rows = []
    for r in videos.to_dict("records"):
        cells = []
        for _, key in _COLUMNS:
            value = r.get(key)
            missing = value is None or (isinstance(value, float) and np.isnan(value))
            shown = _cell(key, value) if not missing else "–"
            title = f' title="{_e(r["error"])}"' if key == "status" and isinstance(r.get("error"), str) else ""
            cells.append(f'<td data-v="{"" if missing else _e(value)}"{title}>{_e(shown)}</td>')
        rows.append(f'<tr data-video="{_e(r["video"])}">{"".join(cells)}</tr>')
    return f'<table id="videos"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _video_sections(out: JobOutput, report_dir: Path) -> str:
    sections = []
    for r in out.videos.sort_values("video").to_dict("records"):
        frames = out.frames[out.frames.video == r["video"]]
        people = r.get("people") or 0
        link = ""
        if r["video"] in out.annotated:
            target = os.path.relpath(out.root / "annotated" / out.annotated[r["video"]], report_dir)
            link = f' · <a href="{_e(Path(target).as_posix())}">annotated video</a>'
        reason = f": {r['error']}" if isinstance(r.get("error"), str) else ""
        chart = chart_svg(compliance_series(frames, float(r.get("duration_s") or 0))) if len(frames) else (
            f'<p class="muted">no frames processed{_e(reason)}</p>')
        sections.append(
            f'<div class="video" data-video="{_e(r["video"])}"><b>{_e(r["video"])}</b> '
            f'<span class="muted">{_e(r["status"])} · compliance {percent(r.get("compliance"))} · '
            f'{int(people)} people, {int(r.get("people_unmasked") or 0)} unmasked{link}</span>{_coverage(r)}{chart}</div>'
        )
    return "".join(sections)


def _coverage(r: dict[str, Any]) -> str:
    """What the video's compliance covers (``jobs/results/coverage.py``); empty for older outputs."""
    limit = r.get("min_face_px")
    if limit is None or pd.isna(limit):
        return ""
    return (
        f'<p class="muted">faces at least {limit:.0f} px wide (both labels reliably found at this size in the '
        f'mode run): {int(r.get("faces_reliable") or 0):,}, compliance {percent(r.get("compliance_reliable"))}; '
        f'{int(r.get("faces_near_min") or 0):,} faces near or below that size</p>'
    )


def _when(track: dict[str, Any]) -> str:
    """The wall-clock time a person was first seen (UTC), with a separator; "" when unknown."""
    first = track.get("first_time")
    return f"{pd.Timestamp(first).strftime('%Y-%m-%d %H:%M:%S')} UTC · " if first is not None and pd.notna(first) else ""


def _thumbnails(tracks: pd.DataFrame) -> str:
    unmasked = tracks[tracks.label != MASK].sort_values(["video", "first_s", "track"])
    shown = unmasked.head(MAX_THUMBNAILS)
    figures = []
    for r in shown.to_dict("records"):
        thumb = r.get("thumbnail")
        img = (f'<img alt="track {int(r["track"])}" src="data:image/jpeg;base64,{base64.b64encode(thumb).decode()}">'
               if isinstance(thumb, (bytes, bytearray)) and thumb else '<div class="muted">no picture</div>')
        figures.append(
            f'<figure class="person" data-video="{_e(r["video"])}" data-track="{int(r["track"])}">{img}<figcaption>'
            f'{_e(r["video"])} #{int(r["track"])}<br>{_e(_when(r))}{clock(r["first_s"])}–{clock(r["last_s"])} · '
            f'{1 - float(r["masked_share"]):.0%} unmasked</figcaption></figure>'
        )
    more = f'<p class="muted">and {len(unmasked) - len(shown):,} more (tracks.parquet has them all)</p>' if len(
        unmasked) > len(shown) else ""
    if not figures:
        return '<p class="muted">No unmasked person.</p>'
    return f'<div class="thumbs">{"".join(figures)}</div>{more}'


PRIVACY_TEXT = {
    "blur": "faces in pictures are blurred",
    "pixelate": "faces in pictures are pixelated",
    "raw": "faces in pictures are NOT hidden (run with --privacy raw)",
    "aggregate": "no face boxes or pictures were kept, only counts",
}


def _privacy(job: dict[str, Any]) -> str:
    mode = job.get("privacy")
    text = PRIVACY_TEXT.get(mode, "not recorded (made before privacy modes: pictures show faces)")
    return f'<p id="privacy" data-mode="{_e(mode or "unknown")}">Privacy mode: <b>{_e(mode or "unknown")}</b> · {_e(text)}</p>'


def camera_rows(out: JobOutput) -> pd.DataFrame:
    """Per-row faces and masked with camera and UTC time: zones/cameras.parquet when zones were
    computed (faces outside every zone of a camera with zones are left out), else the frames."""
    if "cameras" in out.zones:
        return out.zones["cameras"].rename(columns={"start": "when"})
    frames = out.frames
    cams = dict(zip(out.videos.video, out.videos["camera"])) if "camera" in out.videos else {}
    camera = frames["camera"] if "camera" in frames else frames.video.map(cams)
    when = frames["timestamp"] if "timestamp" in frames else pd.Series(pd.NaT, index=frames.index)
    return frames.assign(camera=camera.fillna("–"), when=when)


def _by_hour(out: JobOutput) -> str:
    """The camera x hour table, and the camera/zone x hour table when zones exist."""
    rows = camera_rows(out)
    parts = [heatmap_html(hourly(rows, out.videos, ["camera"], "when"), ["camera"], table_id="camera-hours")]
    note = ("Faces outside every zone of a camera that has zones are not counted."
            if "cameras" in out.zones else "")
    if "intervals" in out.zones and len(out.zones["intervals"]):
        z = out.zones["intervals"].rename(columns={"start": "when"})
        parts.append('<h3>By zone</h3>' + heatmap_html(
            hourly(z, out.videos, ["camera", "zone"], "when"), ["camera", "zone"], table_id="zone-hours"))
    return (f'<p class="muted">Share of faces masked, by local hour of day (each video\'s time zone). '
            f'{_e(note)}</p>' + "".join(parts))


def _problems(videos: pd.DataFrame) -> str:
    bad = videos[videos.status != "done"].sort_values("video")
    if bad.empty:
        return '<p class="muted">Every video was processed completely.</p>'
    rows = "".join(
        f'<tr data-video="{_e(r["video"])}"><td>{_e(r["video"])}</td><td>{_e(r["status"])}</td>'
        f'<td>{_e(r.get("error") or "")}</td></tr>'
        for r in bad.to_dict("records")
    )
    return f'<table id="problems"><thead><tr><th>video</th><th>status</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>'


def render_html(out: JobOutput, report_path: Path) -> str:
    """The whole report page as one string."""
    t = totals(out)
    when = out.job.get("finished") or datetime.now(timezone.utc).isoformat()
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>maskjobs report: {_e(out.root.name)}</title><style>{_CSS}</style></head><body>"
        f'<h1>Face-mask compliance</h1><p class="muted">{_e(out.root)} · job finished {_e(when)} · '
        f'status {_e(out.job.get("status", "unknown"))}</p>'
        f"{_privacy(out.job)}"
        f'<div class="cards" id="totals">{_cards(t)}</div>'
        f"<h2>Compliance by camera and hour</h2>{_by_hour(out)}"
        f"<h2>Videos</h2>{_table(out.videos)}"
        f"<h2>Failed and partial videos</h2>{_problems(out.videos)}"
        f'<h2>Compliance over time</h2><p class="muted">Share of detected faces wearing a mask (green line; '
        f'gaps: no faces) and faces per analysed frame (grey bars), over each video.</p>'
        f"{_video_sections(out, report_path.parent)}"
        f'<h2>Unmasked people</h2><p class="muted">One picture per tracked person whose face was mostly '
        f'unmasked: the best frame of the track, with the time span it was seen.</p>{_thumbnails(out.tracks)}'
        f"<script>{_JS}</script></body></html>"
    )


def write_report(root: Path, output: Path | None = None) -> Path:
    """Writes the report of the job in ``root`` (default ``root/report.html``); returns its path."""
    out = load_output(root)
    path = output or root / REPORT_NAME
    page = render_html(out, path.resolve())
    with atomic_output(path) as tmp:  # whole or not at all, owner only: it shows faces
        tmp.write_text(page, encoding="utf-8")
    logger.info("report: %s", path)
    return path
