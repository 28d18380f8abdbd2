"""``maskjobs report`` and ``maskjobs summary``: a job's results for people.

Thin commands over :mod:`jobs.results.report`; errors of the MaskjobsError family become one
stderr line and their exit code (2 for a directory that is not a job's output).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jobs.cli.options import errors_to_exit_codes

if TYPE_CHECKING:
    from rich.table import Table

    from jobs.results.report import JobOutput

logger = logging.getLogger(__name__)

commands = typer.Typer()

DirArg = Annotated[Path, typer.Argument(help="A `maskjobs run --out` directory.")]


@commands.command()
@errors_to_exit_codes
def report(
    directory: DirArg,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="HTML file to write (default: DIR/report.html).")
    ] = None,
) -> None:
    """Write one self-contained HTML page: totals, compliance over time, videos, unmasked people."""
    from jobs.results.report import write_report

    typer.echo(str(write_report(directory, output)))


@commands.command()
@errors_to_exit_codes
def summary(directory: DirArg) -> None:
    """Print a job's totals (the report's figures) and one line per video."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from jobs.results.report import clock, load_output, percent, totals, video_counts

    out = load_output(directory)
    t = totals(out)
    head = Table(title=f"maskjobs summary: {directory}", show_header=False)
    head.add_column("figure")
    head.add_column("value", justify="right")
    for name, value in (
        ("videos", f"{t['videos']} ({video_counts(t)})"),
        ("video time", clock(t["duration_s"])),
        ("frames analysed", f"{t['frames']:,}"),
        ("faces", f"{t['faces']:,}"),
        ("masked faces", f"{t['masked']:,}"),
        ("unmasked faces", f"{t['unmasked']:,}"),
        ("face compliance", percent(t["compliance"])),
        ("people", f"{t['people']:,}"),
        ("unmasked people", f"{t['people_unmasked']:,}"),
        ("people compliance", percent(t["people_compliance"])),
        ("privacy mode", str(out.job.get("privacy", "not recorded"))),
    ):
        head.add_row(name, value)
    per = Table(title="videos")
    cols = ("video", "status", "duration", "compliance", "people", "unmasked people", "min face px",
            "compliance >= min", "faces near/below min")
    for col in cols:
        per.add_column(col, justify="left" if col in ("video", "status") else "right")
    for r in out.videos.sort_values("video").to_dict("records"):
        limit = r.get("min_face_px")
        covered = limit is not None and pd.notna(limit)  # absent in outputs of older versions
        per.add_row(
            r["video"], r["status"], clock(r["duration_s"]) if pd.notna(r["duration_s"]) else "–",
            percent(r["compliance"]), str(int(r.get("people") or 0)), str(int(r.get("people_unmasked") or 0)),
            f"{limit:.0f}" if covered else "–", percent(r.get("compliance_reliable")) if covered else "–",
            str(int(r.get("faces_near_min") or 0)) if covered else "–",
        )
    console = Console(width=120)
    console.print(head)
    console.print(per)
    console.print(_by_hour_table(out))
    bad = out.videos[out.videos.status != "done"].sort_values("video")
    if len(bad):
        problems = Table(title="failed and partial videos")
        for col in ("video", "status", "reason"):
            problems.add_column(col)
        for r in bad.to_dict("records"):
            problems.add_row(r["video"], r["status"], str(r.get("error") or ""))
        console.print(problems)


def _by_hour_table(out: JobOutput) -> Table:
    """Compliance by camera (and zone, when zones were computed) and local hour, as the report has it."""
    from rich.table import Table

    from jobs.results.heatmap import UNKNOWN, hourly
    from jobs.results.report import camera_rows

    tables = [hourly(camera_rows(out), out.videos, ["camera"], "when")]
    if "intervals" in out.zones and len(out.zones["intervals"]):
        z = out.zones["intervals"].rename(columns={"start": "when"})
        tables.append(hourly(z.assign(camera=z.camera + "/" + z.zone), out.videos, ["camera"], "when"))
    hours = sorted({int(h) for t in tables for h in t.hour})
    table = Table(title="compliance by camera and local hour",
                  caption="faces outside every zone of a camera with zones are left out" if "cameras" in out.zones
                  else None)
    table.add_column("camera")
    for h in hours:
        table.add_column("time unknown" if h == UNKNOWN else f"{h:02d}h", justify="right")
    for t in tables:
        for camera, group in t.groupby("camera", sort=True):
            cells = group.set_index("hour")
            table.add_row(str(camera), *(
                f"{cells.loc[h, 'masked'] / cells.loc[h, 'faces']:.0%}" if h in cells.index and cells.loc[h, "faces"]
                else "–" for h in hours))
    return table
