"""The ``maskjobs`` command line: thin Typer commands over the library.

Errors of the :class:`~detector.errors.MaskjobsError` family become one line on stderr
and their exit code here, at the boundary, and nowhere else.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from jobs.errors import MaskjobsError

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="maskjobs",
    help="Face-mask compliance over hours of video: detect, run batch jobs on Ray, query Parquet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])

WeightsOpt = Annotated[
    Path | None,
    typer.Option("--weights", help="Weight file in any supported format (default: $MASKJOBS_WEIGHTS, then the cache)."),
]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def errors_to_exit_codes(fn: F) -> F:
    """Turns the MaskjobsError family into one stderr line and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MaskjobsError as exc:
            raise _fail(str(exc), exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False) -> None:
    _setup_logging(verbose)


@app.command()
@errors_to_exit_codes
def detect(
    paths: Annotated[list[str], typer.Argument(help="Pictures and videos (every frame of a video).")],
    weights: WeightsOpt = None,
    score_threshold: Annotated[float, typer.Option(help="Keep faces scoring above this.", min=0.0, max=1.0)] = 0.5,
    iou_threshold: Annotated[float, typer.Option(help="NMS overlap threshold.", min=0.0, max=1.0)] = 0.4,
    batch_size: Annotated[int, typer.Option(help="Frames per model call.", min=1)] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array instead of a table.")] = False,
) -> None:
    """Run the detector on pictures and video frames, without Ray."""
    from detector.predictor import FaceMaskDetector
    from jobs.detect import detect_paths
    from jobs.weights import resolve_weights

    detector = FaceMaskDetector(
        resolve_weights(weights), score_threshold=score_threshold, iou_threshold=iou_threshold
    )
    errors: list[MaskjobsError] = []
    results = detect_paths(detector, paths, batch_size=batch_size, errors=errors)
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in results]))
    else:
        for r in results:
            typer.echo(f"{r.video}  frame {r.frame}: {len(r.detections)} face(s)")
            for d in r.detections.to_records():
                typer.echo(
                    f"    {d['label']:<7} {d['score']:.4f}  "
                    f"({d['x1']:.1f}, {d['y1']:.1f}, {d['x2']:.1f}, {d['y2']:.1f})"
                )
    for exc in errors:
        typer.echo(f"error: {exc}", err=True)
    if errors:
        raise typer.Exit(2)


OutOpt = Annotated[
    str,
    typer.Option(
        "--out",
        help="Output: a directory, or a URI pyarrow opens (file:///..., s3://bucket/prefix); "
        "frames/ Parquet dataset + videos.parquet + job.json.",
    ),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file merged over configs/default.yaml.")]
StrideOpt = Annotated[int | None, typer.Option(help="Keep every Nth frame.")]
FpsOpt = Annotated[float | None, typer.Option(help="Sample this many frames per second of video.")]
BatchSizeOpt = Annotated[int | None, typer.Option(help="Frames per model call.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an output made with another config.")]
Int8Opt = Annotated[
    bool,
    typer.Option(
        "--int8",
        help="CPU int8 model calibrated on the videos' keyframes: ~1.1-1.25x faster where few faces score "
        "near the threshold, slower where many do (those frames run again in float32); detections near "
        "float32's, not equal.",
    ),
]
AnnotateOpt = Annotated[
    bool, typer.Option("--annotate", help="Also write OUT/annotated/<video>.mp4: boxes, track ids, compliance.")
]
InputsArg = Annotated[list[str], typer.Argument(help="Video files and directories (searched recursively).")]


def run_overrides(
    *, stride: int | None, fps: float | None, batch_size: int | None, weights: Path | str | None,
    annotate: bool = False,
    int8: bool = False,
) -> dict[str, Any]:
    """The flags shared by ``run`` and ``submit``, as :func:`jobs.config.resolve_config` overrides."""
    return {
        "sampling.stride": stride,
        "sampling.fps": fps,
        "detector.batch_size": batch_size,
        "detector.weights": str(weights) if weights else None,
        "annotate.enabled": True if annotate else None,
        "detector.int8": True if int8 else None,
    }


@app.command()
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
) -> None:
    """Run the batch job: every video's sampled frames through the detector, into Parquet.

    Exit code 0 when every video is done, 1 when any failed (after all others finished).
    """
    from jobs.config import resolve_config
    from jobs.runjob import run_command

    overrides = run_overrides(
        stride=stride, fps=fps, batch_size=batch_size, weights=weights, annotate=annotate, int8=int8
    )
    cfg = resolve_config(config, {**overrides, "ray.address": address})
    code = run_command(inputs, out, cfg, overwrite=overwrite)
    raise typer.Exit(code)


from jobs.cli_models import models_app  # noqa: E402  (below: it uses errors_to_exit_codes)

app.add_typer(models_app, name="models")

from jobs.cli_report import report, summary  # noqa: E402  (below: they use errors_to_exit_codes)

app.command()(report)
app.command()(summary)

import jobs.cli_cluster  # noqa: E402,F401  (registers submit, status, logs, stop, jobs)
