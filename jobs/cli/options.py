"""What every ``maskjobs`` command shares: its options, and errors turned into exit codes.

Errors of the :class:`~detector.errors.MaskjobsError` family become one line on stderr and
their exit code here, at the boundary, and nowhere else.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from jobs.errors import MaskjobsError

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def errors_to_exit_codes(fn: F) -> F:
    """Turns the MaskjobsError family into one stderr line and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MaskjobsError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


WeightsOpt = Annotated[
    Path | None,
    typer.Option("--weights", help="Weight file in any supported format (default: $MASKJOBS_WEIGHTS, then the cache)."),
]
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
KeyframesOpt = Annotated[
    bool,
    typer.Option(
        "--keyframes",
        help="Analyse only the keyframes the container lists, decoding nothing else (long footage; "
        "videos.parquet's sampling_rate says how many frames a second that was).",
    ),
]
TilesOpt = Annotated[
    str | None,
    typer.Option(
        "--tiles",
        help="Small faces: also run the frame cut into overlapping ROWSxCOLS tiles (e.g. 4x4), or 'auto' "
        "for 32 px faces (detector.tiles_target_px), or 'off'. Costs about one frame's time per tile.",
    ),
]
AnnotateOpt = Annotated[
    bool, typer.Option("--annotate", help="Also write OUT/annotated/<video>.mp4: boxes, track ids, compliance.")
]
InputsArg = Annotated[
    list[str],
    typer.Argument(help="Video files and directories (searched recursively), or URIs: s3://bucket/prefix, gs://..., https://... ."),
]


def run_overrides(
    *,
    stride: int | None,
    fps: float | None,
    batch_size: int | None,
    weights: Path | str | None,
    annotate: bool = False,
    int8: bool = False,
    keyframes: bool = False,
    tiles: str | None = None,
) -> dict[str, Any]:
    """The flags shared by ``run`` and ``submit``, as :func:`jobs.config.resolve_config` overrides."""
    return {
        "sampling.stride": stride,
        "sampling.fps": fps,
        "detector.batch_size": batch_size,
        "detector.weights": str(weights) if weights else None,
        "annotate.enabled": True if annotate else None,
        "detector.int8": True if int8 else None,
        "sampling.keyframes": True if keyframes else None,
        "detector.tiles": tiles,
    }
