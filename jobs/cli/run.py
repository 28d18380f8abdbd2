"""``maskjobs run`` end to end: inputs, weights, Ray, the job, the summary."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jobs.cli.options import KeyframesOpt
from jobs.cli.options import (
    AnnotateOpt, BatchSizeOpt, ConfigOpt, FpsOpt, InputsArg, Int8Opt, OutOpt, OverwriteOpt, StrideOpt, WeightsOpt,
    errors_to_exit_codes, run_overrides,
)
from jobs.cli.options import TilesOpt
from jobs.errors import MaskjobsError, one_line

if TYPE_CHECKING:
    from jobs.config import JobConfig
    from jobs.pipeline.job import JobResult

logger = logging.getLogger(__name__)

commands = typer.Typer()

EXIT_DONE = 0  # every video done
EXIT_VIDEOS_FAILED = 1  # some videos failed; every other one finished
EXIT_CRASHED = 3  # the job itself crashed (as ``submit --wait``'s "the job failed")
EXIT_PARTIAL = 4  # no video failed, some are partial: cut off mid-recording, frames before the damage kept


@commands.command()
@errors_to_exit_codes
def run(
    inputs: InputsArg,
    out: OutOpt,
    config: ConfigOpt = None,
    stride: StrideOpt = None,
    fps: FpsOpt = None,
    batch_size: BatchSizeOpt = None,
    weights: WeightsOpt = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster to join (default: an embedded local Ray).")] = None,
    overwrite: OverwriteOpt = False,
    annotate: AnnotateOpt = False,
    int8: Int8Opt = False,
    keyframes: KeyframesOpt = False,
    tiles: TilesOpt = None,
    zones: Annotated[
        Path | None, typer.Option("--zones", help="Zones YAML: compute OUT/zones/ at the end (see `maskjobs zones`).")
    ] = None,
    privacy: Annotated[
        str | None,
        typer.Option(help="blur (default) or pixelate: pictures hide faces; raw: pictures show faces; "
                          "aggregate: no boxes, no pictures, only counts. job.json records it."),
    ] = None,
    start_times: Annotated[
        Path | None, typer.Option("--start-times", help="CSV/YAML: video -> start time, timezone[, camera].")
    ] = None,
) -> None:
    """Run the batch job: every video's sampled frames through the detector, into Parquet.

    Exit code 0 when every video is done, 1 when any failed (after all others finished), 4 when
    none failed but some are partial (cut off mid-recording: the frames before the damage are
    kept), 2 for bad input (nothing run), 3 when the job itself crashed (one line; rerun to resume).
    """
    from jobs.config import resolve_config

    overrides = run_overrides(
        stride=stride, fps=fps, batch_size=batch_size, weights=weights, annotate=annotate, int8=int8, tiles=tiles,
        keyframes=keyframes,
    )
    extra = {"zones.file": str(zones.absolute()) if zones else None, "privacy.mode": privacy,
             "metadata.start_times": str(start_times.absolute()) if start_times else None}
    cfg = resolve_config(config, {**overrides, "ray.address": address, **extra})
    try:
        code = run_command(inputs, out, cfg, overwrite=overwrite)
    except MaskjobsError:
        raise
    except Exception as exc:  # a crash of the job itself, not of a video: its own exit code, one line
        logger.debug("the job crashed", exc_info=True)
        typer.echo(
            f"error: the job crashed ({type(exc).__name__}: {one_line(exc, limit=300)}); "
            "what was committed is kept, run the same command again to resume (-v shows the traceback)",
            err=True,
        )
        raise typer.Exit(EXIT_CRASHED) from None
    raise typer.Exit(code)


def run_command(inputs: list[str], out: str, config: JobConfig, *, overwrite: bool) -> int:
    """Runs the job; returns the exit code (0 all done, 1 some videos failed, 4 some partial).

    ``out`` is a local path or a URI that pyarrow's filesystems understand (``s3://...``).
    Ray and the pipeline are imported here, not at start-up, so ``maskjobs --help`` stays fast.
    """
    from detector.weights import convert_weights
    from jobs.cli.progress import Progress
    from jobs.inputs import discover
    from jobs.pipeline.actor import WeightsPayload
    from jobs.pipeline.job import run_job
    from jobs.pipeline.session import ray_session
    from jobs.weight_cache import resolve_weights
    from sinks.store import OutputStore

    videos = discover(inputs, exclude=[] if "://" in out else [out])  # never its own output as input
    weights = WeightsPayload.from_converted(convert_weights(resolve_weights(config.detector.weights)))
    sink = OutputStore(out)
    progress = Progress()
    t0 = time.monotonic()
    with sink.leased(), ray_session(config.ray) as ray:  # one writer per output, before anything is written
        ray_start_s = time.monotonic() - t0
        logger.info("Ray ready in %.2f s", ray_start_s)
        result = run_job(
            ray, videos, config, weights, sink, overwrite=overwrite,
            on_plan=progress.start, on_frames=progress.advance, timings={"ray_start_s": ray_start_s},
        )
    fps = progress.close()
    print_summary(result, fps)
    for v in result.failed:
        sys.stderr.write(f"error: {v['path']}: {v['error']}\n")
    for v in result.partial:
        sys.stderr.write(f"warning: {v['path']}: partial: {v['error']}\n")
    if result.failed:
        return EXIT_VIDEOS_FAILED
    return EXIT_PARTIAL if result.partial else EXIT_DONE


def print_summary(result: JobResult, fps: float) -> None:
    from rich.console import Console
    from rich.table import Table

    if fps > 0:
        rate = f", {fps:.1f} frames/s"
    else:  # all committed before, or no video readable
        rate = ", nothing left to process" if len(result.failed) < len(result.videos) else ", no video readable"
    table = Table(title=f"maskjobs run: {len(result.videos)} videos{rate}")
    for col in ("video", "status", "frames", "per s", "faces", "masked", "unmasked", "compliance", "people",
                "unmasked people"):
        table.add_column(col, justify="left" if col in ("video", "status") else "right")
    for v in result.videos:
        comp = "-" if v["compliance"] is None else f"{v['compliance']:.1%}"
        table.add_row(
            v["video"], v["status"], str(v["frames_processed"]),
            "-" if v.get("sampling_rate") is None else f"{v['sampling_rate']:.2f}", str(v["faces"]), str(v["masked"]),
            str(v["unmasked"]), comp, *("-" if v.get(k) is None else str(v[k]) for k in ("people", "people_unmasked")),
        )
    Console(width=120).print(table)
    _print_coverage(result)


def _print_coverage(result: JobResult) -> None:
    """Per video, what its compliance covers (``jobs/results/coverage.py``)."""
    for v in result.videos:
        if v.get("min_face_px") is None:
            continue
        comp = "-" if v["compliance_reliable"] is None else f"{v['compliance_reliable']:.1%}"
        typer.echo(
            f"{v['video']}: faces >= {v['min_face_px']:.0f} px (both labels reliably found): {v['faces_reliable']}, "
            f"compliance {comp}; {v['faces_near_min']} faces near or below that size"
        )
