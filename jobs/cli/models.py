"""``maskjobs models ...``: import, inspect, verify, export and fetch weight files.

Thin commands over :mod:`detector.weights` and :mod:`jobs.weight_cache`; errors of the
MaskjobsError family become one stderr line and their exit code (2 for a bad file,
1 for a parity check over tolerance).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from jobs.cli.options import errors_to_exit_codes
from jobs.errors import InputError, JobFailedError, WeightsError

logger = logging.getLogger(__name__)

commands = typer.Typer(
    help="Weight files: import any published format, inspect, verify parity, export ONNX, fetch.",
    no_args_is_help=True,
)

FileArg = Annotated[
    Path | None,
    typer.Argument(help="Weight file in any supported format (default: $MASKJOBS_WEIGHTS, then the cache)."),
]


def _native_name(input_size: int) -> str:
    return "face_mask_detection.safetensors" if input_size == 260 else f"model{input_size}.safetensors"


@commands.command("import")
@errors_to_exit_codes
def import_(
    src: FileArg = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Native .safetensors to write (default: in the weights cache)."),
    ] = None,
) -> None:
    """Convert a weight file of any supported format to the native .safetensors format."""
    from detector.weights import load_weights, save_native
    from jobs.weight_cache import resolve_weights, weights_cache
    from sinks.atomic import atomic_output

    loaded = load_weights(resolve_weights(src))
    out = output or weights_cache() / _native_name(loaded.spec.input_size)
    with atomic_output(out) as tmp:  # the cache never holds a partial file
        save_native(loaded, tmp)
    typer.echo(f"{out}: from {loaded.path} ({loaded.format}, input {loaded.spec.input_size}, sha256 {loaded.sha256})")


@commands.command()
@errors_to_exit_codes
def info(file: FileArg = None) -> None:
    """Show a weight file's format, checksum and the model it holds."""
    from detector.weights import load_weights
    from jobs.weight_cache import resolve_weights

    loaded = load_weights(resolve_weights(file))
    spec = loaded.spec
    rows = {
        "file": str(loaded.path),
        "format": loaded.format,
        "sha256": loaded.sha256,
        "input size": f"{spec.input_size}x{spec.input_size}",
        "parameters": f"{sum(p.numel() for p in loaded.model.parameters()):,}",
        "feature maps": ", ".join(f"{s}x{s}" for s in spec.feature_map_sizes),
        "anchors": f"{spec.num_anchors:,} (sizes {list(spec.anchor_sizes)}, ratios {list(spec.anchor_ratios)})",
        "classes": ", ".join(spec.class_names),
    }
    rows.update({k.replace("_", " "): v for k, v in loaded.metadata.items() if k.startswith("source_")})
    for key, value in rows.items():
        typer.echo(f"{key + ':':<15}{value}")


@commands.command()
@errors_to_exit_codes
def verify(
    file: FileArg = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help="The published Caffe .prototxt or .caffemodel (default: beside FILE, then in the cache).",
        ),
    ] = None,
) -> None:
    """Compare raw outputs with OpenCV DNN on the Caffe model (else a self-check); exit 1 over 1e-4."""
    from detector.weights import from_raw, read_weights
    from detector.weights.verify import TOLERANCE, opencv_available, opencv_parity, self_consistency
    from jobs.weight_cache import find_caffe_reference, resolve_weights

    raw = read_weights(resolve_weights(file))
    loaded = from_raw(raw)
    if reference is not None and loaded.spec.input_size != 260:
        raise InputError(f"{loaded.path}: a {loaded.spec.input_size}-input model has no Caffe reference (it is 260)")
    pair = find_caffe_reference(reference, raw.path) if loaded.spec.input_size == 260 else None
    if pair is not None and (reference is not None or opencv_available()):
        report = opencv_parity(loaded.model, *pair)
    else:
        report = self_consistency(loaded.model, raw)
    typer.echo(f"weights:     {loaded.path} ({loaded.format})")
    typer.echo(f"reference:   {report.reference}")
    typer.echo(f"inputs:      {report.inputs}")
    typer.echo(f"loc max abs diff:    {report.loc_max_abs_diff:.3e}")
    typer.echo(f"scores max abs diff: {report.scores_max_abs_diff:.3e}")
    if not report.passed(TOLERANCE):
        raise JobFailedError(f"{loaded.path}: max abs diff {report.max_abs_diff:.3e} exceeds {TOLERANCE:g}")
    typer.echo(f"ok: within {TOLERANCE:g}")


@commands.command()
@errors_to_exit_codes
def export(
    file: FileArg = None,
    onnx: Annotated[
        Path, typer.Option("--onnx", help="ONNX file to write (input 'images', outputs 'loc', 'scores').")
    ] = ...,
) -> None:
    """Export the model to ONNX: NCHW float input in [0, 1], dynamic batch."""
    from detector.weights import load_weights
    from detector.weights.onnx_export import export_onnx
    from jobs.weight_cache import resolve_weights
    from sinks.atomic import atomic_output

    loaded = load_weights(resolve_weights(file))
    out = onnx
    try:
        with atomic_output(out) as tmp:
            export_onnx(loaded.model, tmp)
    except WeightsError as exc:  # name the file asked for, not the one written aside
        raise WeightsError(out, exc.cause) from None
    logger.info("exported %s (input %d, dynamic batch)", out, loaded.spec.input_size)
    typer.echo(f"{out}: ONNX of {loaded.path} ({loaded.format}, input {loaded.spec.input_size}, dynamic batch)")


@commands.command()
@errors_to_exit_codes
def fetch(
    formats: Annotated[
        list[str] | None,
        typer.Argument(help="Formats to download: caffe, pytorch, pytorch-360, tensorflow, tflite, mxnet, paddle."),
    ] = None,
    all_formats: Annotated[bool, typer.Option("--all", help="Download every published format.")] = False,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url", help="Mirror of the AIZOO repository (default: $MASKJOBS_WEIGHTS_URL, then GitHub)."
        ),
    ] = None,
) -> None:
    """Download AIZOO's published weights at a pinned commit, check their SHA-256, cache them (default: caffe)."""
    from jobs.weight_cache import FETCH_SETS, fetch as fetch_files

    chosen = list(FETCH_SETS) if all_formats else (formats or ["caffe"])
    for path in fetch_files(chosen, base=base_url):
        typer.echo(str(path))
