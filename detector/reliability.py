"""How small a face the model reliably finds, from the benchmark's measured curve.

``detector/reliability.json`` is written by ``python -m benchmarks.bench_tiling --write-table``
(generated footage with true boxes, :mod:`benchmarks.groundtruth`): per model input size and
label, faces found with the right label / true faces, binned by the face's *relative width*:
its width over the width of the smallest picture the model saw it in (the frame in
whole-frame mode, a tile in tiled mode). The model sees every picture resized to its input,
so the relative width, not the face's pixels, decides whether it is found; one curve per
input size serves every resolution and tiling.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

__all__ = ["RELIABLE_RECALL", "recall_curve", "reliable_fraction", "reliable_width"]

RELIABLE_RECALL = 0.9
_MIN_FACES = 10  # bins with fewer true faces say nothing either way


@cache
def _table() -> dict:
    return json.loads(resources.files("detector").joinpath("reliability.json").read_text())


def recall_curve(input_size: int) -> dict[str, list[tuple[float, float, int]]]:
    """Per label, ``(relative width from, recall, true faces)`` by increasing width.

    Raises ``KeyError`` naming the measured sizes for an input size never measured.
    """
    curves = _table()["curves"]
    if str(input_size) not in curves:
        raise KeyError(f"no reliability curve for input size {input_size} (measured: {', '.join(curves)})")
    entry = curves[str(input_size)]
    out = {}
    for label in ("Mask", "NoMask"):
        rows = sorted((float(k), f / n, n) for k, (f, n) in entry[label].items() if n)
        out[label] = rows
    return out


def reliable_fraction(input_size: int, *, recall: float = RELIABLE_RECALL, min_faces: int = _MIN_FACES) -> float:
    """The smallest relative face width from which on both labels are found with at least
    ``recall`` in every measured bin (bins with under ``min_faces`` faces ignored)."""
    bins: dict[float, list[float]] = {}
    for rows in recall_curve(input_size).values():
        for start, r, n in rows:
            if n >= min_faces:
                bins.setdefault(start, []).append(r)
    starts = sorted(bins)
    reliable = 1.0
    for start in reversed(starts):
        if min(bins[start]) < recall:
            break
        reliable = start
    return reliable


def reliable_width(picture_width: float, input_size: int, *, recall: float = RELIABLE_RECALL) -> float:
    """Pixels: the narrowest face reliably found when the smallest picture the model sees is
    ``picture_width`` px wide (the frame's width, or a tile's)."""
    return reliable_fraction(input_size, recall=recall) * picture_width
