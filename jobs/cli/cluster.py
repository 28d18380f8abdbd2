"""``maskjobs submit / status / logs / stop / jobs``: the batch job on a Ray cluster's Jobs API.

Thin commands over :mod:`jobs.cluster.submit` (packing ``maskjobs run`` as a Ray job) and
:mod:`jobs.cluster.client` (the Jobs API client). Exit codes: 2 when nothing could be done (bad
flags, unreachable cluster, missing token, no such job); ``submit --wait`` exits with the
job's outcome: 0 done, 1 videos failed, 3 job failed or stopped.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from typing import Annotated, Any

import typer

from jobs.cli.options import KeyframesOpt
from jobs.cli.options import (
    BatchSizeOpt,
    ConfigOpt,
    FpsOpt,
    InputsArg,
    Int8Opt,
    OutOpt,
    OverwriteOpt,
    StrideOpt,
    WeightsOpt,
    errors_to_exit_codes,
    run_overrides,
)

logger = logging.getLogger(__name__)

commands = typer.Typer()

AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        envvar="RAY_ADDRESS",
        show_envvar=True,
        help="The cluster's Jobs API, http://HEAD:8265 (token: $RAY_AUTH_TOKEN, else ~/.ray/auth_token).",
    ),
]
JobArg = Annotated[str, typer.Argument(help="The job's submission id (printed by submit; see `maskjobs jobs`).")]


def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _finish(info: Any) -> None:
    """Reports a finished job on stderr and exits with its outcome."""
    from jobs.cluster.client import describe, outcome_code

    code = outcome_code(info)
    typer.echo(describe(info) if code == 0 else f"error: {describe(info)}", err=True)
    raise typer.Exit(code)


def _follow(cluster: Any, job_id: str) -> Any:
    """Streams the job's logs until it ends; Ctrl-C stops following, not the job."""
    try:
        return cluster.follow(job_id, sys.stdout)
    except KeyboardInterrupt:
        typer.echo(f"error: stopped following {job_id}; it goes on (`maskjobs stop {job_id}` stops it)", err=True)
        raise typer.Exit(130) from None


@commands.command()
@errors_to_exit_codes
def submit(
    inputs: InputsArg,
    out: OutOpt,
    address: AddressOpt = None,
    config: ConfigOpt = None,
    stride: StrideOpt = None,
    fps: FpsOpt = None,
    batch_size: BatchSizeOpt = None,
    weights: WeightsOpt = None,
    overwrite: OverwriteOpt = False,
    int8: Int8Opt = False,
    keyframes: KeyframesOpt = False,
    wait: Annotated[bool, typer.Option(help="Follow the job's logs; exit with its outcome (0, 1, 3 or 4).")] = False,
    ship_code: Annotated[
        bool,
        typer.Option(help="Ship this maskjobs code with the job (--no-ship-code: it is installed on the cluster)."),
    ] = True,
    ship_weights: Annotated[
        bool,
        typer.Option(help="Ship the weight file with the job (--no-ship-weights: --weights is a path the head sees)."),
    ] = True,
    check_inputs: Annotated[
        bool, typer.Option(help="Check that the inputs exist here (paths: at the same path on the cluster; URIs: listed here).")
    ] = True,
    python: Annotated[
        str | None,
        typer.Option(help="The head's Python for the job (default: `python` on the PATH `ray start` ran with)."),
    ] = None,
) -> None:
    """Submit `maskjobs run` to a Ray cluster through its Jobs API; print the job id.

    Inputs and --out are URIs every node reads (s3://bucket/prefix, gs://..., https://...; credentials
    from the nodes' environment) or paths every node mounts. The config is resolved here and travels with the job.
    """
    from jobs.cluster.client import Cluster
    from jobs.config import resolve_config
    from jobs.cluster.submit import staged_submission

    cfg = resolve_config(config, run_overrides(
        stride=stride, fps=fps, batch_size=batch_size, weights=weights, int8=int8, keyframes=keyframes,
    ))
    cluster = Cluster(address)
    with staged_submission(
        inputs, out, cfg, overwrite=overwrite, ship_code=ship_code, ship_weights=ship_weights,
        check_inputs=check_inputs, python=python,
    ) as job:
        job_id = cluster.submit(job.entrypoint, job.runtime_env, job.metadata)
    typer.echo(job_id)
    if wait:
        _finish(_follow(cluster, job_id))


@commands.command()
@errors_to_exit_codes
def status(job: JobArg, address: AddressOpt = None) -> None:
    """Show a job's status, exit code, times and entrypoint."""
    from jobs.cluster.client import Cluster, describe

    info = Cluster(address).info(job)
    rows = {
        "job": info.submission_id or info.job_id,
        "status": str(getattr(info.status, "value", info.status)),
        "exit code": "-" if info.driver_exit_code is None else str(info.driver_exit_code),
        "started": _time(info.start_time),
        "ended": _time(info.end_time),
        "out": (info.metadata or {}).get("out", "-"),
        "entrypoint": info.entrypoint,
        "summary": describe(info),
    }
    for key, value in rows.items():
        typer.echo(f"{key + ':':<12}{value}")


@commands.command()
@errors_to_exit_codes
def logs(
    job: JobArg,
    address: AddressOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming until the job ends.")] = False,
) -> None:
    """Print a job's logs (the output of `maskjobs run` on the cluster)."""
    from jobs.cluster.client import Cluster

    cluster = Cluster(address)
    if follow:
        _follow(cluster, job)
    else:
        typer.echo(cluster.logs(job), nl=False)


@commands.command()
@errors_to_exit_codes
def stop(
    job: JobArg,
    address: AddressOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the job to stop.", min=0)] = 30,
) -> None:
    """Stop a job; its committed shards stay, and submitting it again resumes it."""
    from jobs.cluster.client import Cluster, describe
    from jobs.errors import ClusterError

    info = Cluster(address).stop(job, timeout_s=timeout)
    if not info.status.is_terminal():
        raise ClusterError(f"{job}: still {info.status.value} after {timeout:g} s")
    typer.echo(describe(info))


@commands.command("jobs")
@errors_to_exit_codes
def list_jobs(address: AddressOpt = None) -> None:
    """List the cluster's jobs, oldest first."""
    from jobs.cluster.client import Cluster

    rows = [("JOB", "STATUS", "STARTED", "OUT", "ENTRYPOINT")]
    for info in Cluster(address).list():
        entry = info.entrypoint if len(info.entrypoint) <= 60 else info.entrypoint[:57] + "..."
        rows.append(
            (
                info.submission_id or info.job_id or "-",
                str(getattr(info.status, "value", info.status)),
                _time(info.start_time),
                (info.metadata or {}).get("out", "-"),
                entry,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])

