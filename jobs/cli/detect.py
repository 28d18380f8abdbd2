"""``maskjobs detect``: the detector on pictures and video frames, without Ray."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jobs.cli.options import WeightsOpt, errors_to_exit_codes
from jobs.errors import ImageReadError, MaskjobsError

if TYPE_CHECKING:
    from detector.detections import Detections
    from detector.predictor import FaceMaskDetector
    from detector.tiling import TileGrid

logger = logging.getLogger(__name__)

commands = typer.Typer()


@dataclass(frozen=True)
class FrameResult:
    """Detections of one picture (``frame`` 0) or one video frame."""

    video: str
    frame: int
    detections: Detections

    def to_json(self) -> dict:
        return {"video": self.video, "frame": self.frame, "detections": self.detections.to_records()}


def detect_paths(
    detector: FaceMaskDetector,
    paths: Sequence[str],
    *,
    batch_size: int = 16,
    errors: list[ImageReadError] | None = None,
    tiles: TileGrid | str | None = None,
) -> Iterator[FrameResult]:
    """Yields results per picture or frame; unreadable inputs are appended to ``errors``.
    ``tiles``: also detect in overlapping tiles (:mod:`detector.tiling`)."""
    from jobs.media import is_video, iter_video_batches, read_image_rgb

    errors = errors if errors is not None else []
    for given in paths:
        path = Path(given)
        try:
            if is_video(path):
                for idx, frames in iter_video_batches(path, batch_size):
                    if tiles is None:
                        sizes = [(frames.shape[2], frames.shape[1])] * len(frames)
                        dets = detector.detect_prepared(detector.prepare(frames), sizes)
                    else:
                        dets = detector.detect(list(frames), tiles=tiles)
                    for i, d in zip(idx.tolist(), dets):
                        yield FrameResult(given, i, d)
            else:
                image = read_image_rgb(path)
                yield FrameResult(given, 0, detector.detect([image], tiles=tiles)[0])
        except ImageReadError as exc:
            logger.debug("skipping %s: %s", given, exc)
            errors.append(exc)


@commands.command()
@errors_to_exit_codes
def detect(
    paths: Annotated[list[str], typer.Argument(help="Pictures and videos (every frame of a video).")],
    weights: WeightsOpt = None,
    score_threshold: Annotated[float, typer.Option(help="Keep faces scoring above this.", min=0.0, max=1.0)] = 0.5,
    iou_threshold: Annotated[float, typer.Option(help="NMS overlap threshold.", min=0.0, max=1.0)] = 0.4,
    batch_size: Annotated[int, typer.Option(help="Frames per model call.", min=1)] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array instead of a table.")] = False,
    tiles: Annotated[
        str,
        typer.Option(help="Small faces: also run overlapping ROWSxCOLS tiles (e.g. 4x4), 'auto' (32 px faces) or 'off'."),
    ] = "off",
) -> None:
    """Run the detector on pictures and video frames, without Ray."""
    from detector.predictor import FaceMaskDetector
    from detector.tiling import parse_tiles
    from jobs.weight_cache import resolve_weights

    try:
        grid = parse_tiles(tiles)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tiles") from None

    detector = FaceMaskDetector(
        resolve_weights(weights), score_threshold=score_threshold, iou_threshold=iou_threshold
    )
    errors: list[MaskjobsError] = []
    results = detect_paths(detector, paths, batch_size=batch_size, errors=errors, tiles=grid)
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
