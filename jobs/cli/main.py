"""The ``maskjobs`` application: every command group registered the same way, in one place.

Each module of :mod:`jobs.cli` owns a ``commands`` Typer of its own commands; this module
only merges them (``add_typer`` without a name puts a module's commands at the top level,
with a name makes a group), so no command module imports another and there is no cycle.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from jobs.cli import cluster, detect, models, report, run, zones

app = typer.Typer(
    name="maskjobs",
    help="Face-mask compliance over hours of video: detect, run batch jobs on Ray, query Parquet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


for _module in (detect, run, report, cluster, zones):
    app.add_typer(_module.commands)
app.add_typer(models.commands, name="models")
