"""ONNX export of a loaded model (``torch.onnx.export``, the torch.export-based exporter).

The graph: input ``images`` (N, 3, S, S) float32 RGB in [0, 1] (NCHW; the resize and /255
are the caller's, as in :mod:`detector.preprocess`), outputs ``loc`` (N, A, 4) box offsets
and ``scores`` (N, A, C) sigmoid scores, the batch dimension N dynamic.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from detector.errors import WeightsError, one_line
from detector.model import AizooSSD

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("loc", "scores")
_MAX_BATCH = 4096


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter prints progress to stdout, warns and logs about torch internals: keep it quiet."""
    torch_onnx_logger = logging.getLogger("torch.onnx")
    level = torch_onnx_logger.level
    torch_onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_onnx_logger.setLevel(level)


def export_onnx(model: AizooSSD, out: Path | str) -> Path:
    """Writes ``model`` as a self-contained ONNX file at ``out``, in place, and returns its path.

    ``out`` is written as given (a caller that needs it to appear whole wraps this in
    :func:`sinks.atomic.atomic_output`, as ``maskjobs models export`` does); a failure of the
    exporter is a :class:`WeightsError` naming ``out``.
    """
    out = Path(out)
    size = model.spec.input_size
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    try:
        with _quiet_exporter():
            torch.onnx.export(
                model.eval(),
                (example,),
                out,
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
            )
    except (RuntimeError, ValueError, ImportError) as exc:  # the exporter's failures
        raise WeightsError(
            out, f"ONNX export failed ({type(exc).__name__}: {one_line(exc, limit=160)})"
        ) from None
    return out
