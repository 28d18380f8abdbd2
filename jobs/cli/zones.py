"""``maskjobs zones``: per-zone compliance, people and line crossings from a job's committed
rows, without running the model again (:mod:`jobs.results.zones`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from jobs.cli.options import errors_to_exit_codes

logger = logging.getLogger(__name__)

commands = typer.Typer()


@commands.command()
@errors_to_exit_codes
def zones(
    out: Annotated[str, typer.Argument(help="A `maskjobs run --out` directory or URI.")],
    zones_file: Annotated[Path, typer.Option("--zones", help="Zones YAML: polygons and lines per camera.")],
    interval: Annotated[
        str | None, typer.Option(help="Interval of the per-interval tables (e.g. 15min, 1h; default: the file's).")
    ] = None,
) -> None:
    """Compute zones and lines over a finished job's detections into OUT/zones/*.parquet."""
    from rich.console import Console
    from rich.table import Table

    from jobs.results.zones import compute_zones
    from sinks.store import OutputStore

    summary = compute_zones(OutputStore(out), zones_file, interval=interval)
    table = Table(title=f"maskjobs zones, per {summary['interval']}",
                  caption=f"{summary['cameras']} cameras, {summary['zones']} zones, {summary['lines']} lines")
    table.add_column("file")
    table.add_column("rows", justify="right")
    for name, rows in summary["rows"].items():
        table.add_row(f"zones/{name}.parquet", str(rows))
    Console(width=120).print(table)
    for camera in summary["unknown_cameras"]:
        typer.echo(f"warning: no video has camera {camera!r}", err=True)
