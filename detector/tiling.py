"""Tiled detection for small faces: tile geometry, cutting, and merging tiles' boxes.

The model sees a picture resized to its square input (260x260), so a 32 px face in a 1080p
frame is ~4 px wide there: far below the smallest anchor (0.04 of the input). Cutting the
frame into overlapping tiles, each resized to the input like a frame, shows small faces
larger; the whole frame runs too, for faces larger than a tile. The boxes of all of a
frame's pictures map back to source pixels and are merged so that each face is one
detection (:func:`merge_tiles`).

All boxes are ``(x1, y1, x2, y2)``. Pure functions; thresholds are keyword arguments. Only
:func:`merge_tiles` imports torch (decode workers cut tiles without it).
A grid is ``rows x cols`` (``"3x4"``: 3 rows, 4 columns).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detector.detections import Detections
from detector.preprocess import resize_rgb

__all__ = [
    "DEFAULT_OVERLAP",
    "TileGrid",
    "auto_grid",
    "cut_tiles",
    "merge_tiles",
    "parse_tiles",
    "resolve_grid",
    "tile_boxes",
]

DEFAULT_OVERLAP = 0.25  # of a tile's width and height, shared with each neighbour
AUTO = "auto"
OFF = "off"
_GRID = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True)
class TileGrid:
    """``rows`` x ``cols`` overlapping tiles; ``whole``: the whole frame runs too (first).

    ``overlap``: the fraction of a tile's side it shares with each neighbour; a face narrower
    than the overlap band is whole in at least one tile.
    """

    rows: int
    cols: int
    overlap: float = DEFAULT_OVERLAP
    whole: bool = True

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"a tile grid needs at least 1x1 tiles, got {self.rows}x{self.cols}")
        if self.rows * self.cols > 256:
            raise ValueError(f"{self.rows}x{self.cols} tiles is too many (at most 256)")
        if not 0.0 <= self.overlap < 0.9:
            raise ValueError(f"tile overlap must be in [0, 0.9), got {self.overlap}")

    @property
    def per_frame(self) -> int:
        """Model inputs per frame: the tiles, plus the whole frame if ``whole``."""
        return self.rows * self.cols + int(self.whole)

    def __str__(self) -> str:
        return f"{self.rows}x{self.cols}"


def parse_tiles(text: str | None, *, overlap: float = DEFAULT_OVERLAP) -> TileGrid | str | None:
    """``None``/``"off"``/``"1x1"`` -> ``None`` (whole frame only, the reference); ``"auto"`` ->
    ``"auto"`` (see :func:`auto_grid`); ``"RxC"`` -> a :class:`TileGrid`. Else ``ValueError``."""
    if text is None:
        return None
    value = str(text).strip().lower()
    if value in ("", OFF, "none", "false"):
        return None
    if value == AUTO:
        return AUTO
    m = _GRID.match(value)
    if not m:
        raise ValueError(f"tiles must be 'off', 'auto' or ROWSxCOLS like '3x3', got {text!r}")
    rows, cols = int(m.group(1)), int(m.group(2))
    if rows == cols == 1:
        return None
    return TileGrid(rows, cols, overlap=overlap)


def tile_boxes(width: int, height: int, grid: TileGrid) -> np.ndarray:
    """The pictures the model sees for a ``width`` x ``height`` frame.

    Returns:
        (T, 4) int64 ``(x1, y1, x2, y2)`` in frame pixels, ``T = grid.per_frame``: the whole
        frame first (if ``grid.whole``), then the tiles row by row. Tiles have equal sizes,
        ``side = frame / (n - (n - 1) * overlap)``, spread evenly from edge to edge.
    """
    def spans(size: int, n: int) -> np.ndarray:
        side = min(size, math.ceil(size / (n - (n - 1) * grid.overlap)))
        starts = np.round(np.linspace(0, size - side, n)).astype(np.int64)
        return np.stack([starts, starts + side], axis=1)  # (n, 2)

    xs, ys = spans(width, grid.cols), spans(height, grid.rows)
    tiles = [(x[0], y[0], x[1], y[1]) for y in ys for x in xs]
    if grid.whole:
        tiles.insert(0, (0, 0, width, height))
    return np.asarray(tiles, dtype=np.int64).reshape(-1, 4)


def auto_grid(
    width: int, height: int, *, target_px: float = 32.0, min_fraction: float, most: int = 12,
    overlap: float = DEFAULT_OVERLAP,
) -> TileGrid | None:
    """The fewest tiles, near square in the frame (``rows = round(cols * height / width)``:
    faces keep their shape, which the benchmark found matters for masked faces), at which a
    face ``target_px`` wide is at least ``min_fraction`` of a tile's width: the smallest
    relative width the model reliably finds (:mod:`detector.reliability`). ``None`` when the
    whole frame already does; ``most`` columns when even that does not."""
    if width * min_fraction <= target_px:
        return None
    grid = None
    for cols in range(2, most + 1):
        rows = max(1, round(cols * height / width))
        grid = TileGrid(rows, cols, overlap=overlap)
        first = tile_boxes(width, height, grid)[1]
        if (first[2] - first[0]) * min_fraction <= target_px:
            return grid
    return grid


def resolve_grid(
    tiles: TileGrid | str | None, width: int, height: int, *, target_px: float = 32.0, input_size: int = 260,
    min_fraction: float | None = None,
) -> TileGrid | None:
    """The grid for one frame size: ``tiles`` itself, or :func:`auto_grid`'s choice for ``"auto"``
    (``min_fraction`` defaults to the stored curve's for the ``input_size`` model,
    :func:`~detector.reliability.reliable_fraction`)."""
    if tiles != AUTO:
        return tiles if isinstance(tiles, TileGrid) else None
    if min_fraction is None:
        from detector.reliability import reliable_fraction

        min_fraction = reliable_fraction(input_size)
    return auto_grid(width, height, target_px=target_px, min_fraction=min_fraction)


def cut_tiles(image: np.ndarray, boxes: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB and (T, 4) tile boxes -> (T, size, size, 3) uint8 model inputs, each
    tile resized like a whole frame (:func:`~detector.preprocess.resize_rgb`). Writes into
    ``out`` if given."""
    if out is None:
        out = np.empty((len(boxes), size, size, 3), np.uint8)
    for t, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        out[t] = resize_rgb(image[y1:y2, x1:x2], size)
    return out


def merge_tiles(
    per_tile: Sequence[Detections],
    boxes: np.ndarray,
    width: int,
    height: int,
    *,
    iou_threshold: float = 0.4,
    containment: float = 0.6,
    edge_tolerance: float = 0.02,
) -> Detections:
    """One frame's detections from its pictures' detections.

    Args:
        per_tile: T :class:`Detections`, boxes in each picture's own pixels (as
            :func:`~detector.postprocess.postprocess` returns them for the tiles' sizes).
        boxes: (T, 4) the pictures in frame pixels (:func:`tile_boxes`).
        width, height: the frame's size; a tile side on the frame's border is not a seam.
        iou_threshold: class-agnostic NMS across pictures (as the reference's NMS is
            class-agnostic inside one: a face is one detection with one label).
        containment: a box cut by a seam (an edge within ``edge_tolerance`` of its tile's
            side, times that side) is dropped when a larger, uncut box from another picture
            (the fuller view of the same face) has at least this fraction of its part inside
            the cut box's tile covered by the cut box: what that tile could show of the face.
            And a box is dropped when a smaller box scoring higher lies mostly (this
            fraction) inside it, found in a smaller picture that holds all of the larger box:
            at a finer scale the model saw that region and called only the small part a face
            (the whole frame's false positives around small faces).
    Returns:
        :class:`Detections` in frame pixels, by descending score.
    """
    if len(per_tile) != len(boxes):
        raise ValueError(f"{len(per_tile)} detections for {len(boxes)} tiles")
    counts = [len(d) for d in per_tile]
    names = per_tile[0].class_names if per_tile else Detections.empty().class_names
    if sum(counts) == 0:
        return Detections.empty(names)
    tile_of = np.repeat(np.arange(len(boxes)), counts)
    origin = boxes[tile_of, :2].astype(np.float32)
    det = np.concatenate([d.boxes for d in per_tile]) + np.tile(origin, 2)  # (N, 4) frame pixels
    scores = np.concatenate([d.scores for d in per_tile])
    labels = np.concatenate([d.labels for d in per_tile])

    own = boxes[tile_of].astype(np.float32)  # (N, 4) each box's picture
    cut = _cut_at_seam(det, own, width, height, edge_tolerance)
    # j clipped to i's picture: the part of face j that picture i could show, [i, j, 4]
    seen = np.concatenate([np.maximum(det[None, :, :2], own[:, None, :2]), np.minimum(det[None, :, 2:], own[:, None, 2:])], axis=2)
    seen_wh = np.clip(seen[..., 2:] - seen[..., :2], 0, None)
    iw = np.clip(np.minimum(det[:, None, 2], seen[..., 2]) - np.maximum(det[:, None, 0], seen[..., 0]), 0, None)
    ih = np.clip(np.minimum(det[:, None, 3], seen[..., 3]) - np.maximum(det[:, None, 1], seen[..., 1]), 0, None)
    covered = iw * ih / np.maximum(seen_wh[..., 0] * seen_wh[..., 1], 1e-6)  # [i, j]: of j's part in i's picture, inside i
    area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
    fuller = (covered >= containment) & (area[None, :] > area[:, None]) & ~cut[None, :] & (tile_of[:, None] != tile_of[None, :])
    # a coarse box holding a stronger, smaller face from a finer picture that saw all of it
    inter = _intersection(det, det)
    holds = inter / np.maximum(area[None, :], 1e-6) >= containment  # [i, j]: j mostly inside i
    saw_all = (own[None, :, :2] <= det[:, None, :2] + 1).all(-1) & (own[None, :, 2:] >= det[:, None, 2:] - 1).all(-1)
    finer = (own[:, 2] - own[:, 0])[None, :] < (own[:, 2] - own[:, 0])[:, None]  # [i, j]: j's picture is smaller
    swallowed = holds & saw_all & finer & (scores[None, :] > scores[:, None]) & (area[None, :] < area[:, None])
    alive = ~(cut & fuller.any(axis=1)) & ~swallowed.any(axis=1)

    import torch

    from detector.postprocess import batched_nms

    order = np.argsort(-scores, kind="stable")
    order = order[alive[order]]
    ranked = torch.from_numpy(det[order])[None]
    keep = batched_nms(ranked, torch.ones(1, len(order), dtype=torch.bool), iou_threshold=iou_threshold)[0].numpy()
    chosen = order[keep]
    clipped = np.clip(det[chosen], 0, np.array([width, height, width, height], np.float32))
    return Detections(clipped.astype(np.float32), scores[chosen], labels[chosen], names)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) and (M, 4) boxes -> (N, M) areas of their intersections."""
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    return iw * ih


def _cut_at_seam(det: np.ndarray, tiles: np.ndarray, width: int, height: int, tolerance: float) -> np.ndarray:
    """(N,) bool: which boxes touch a side of their tile that is inside the frame (a seam).

    Args:
        det: (N, 4) boxes and tiles: (N, 4) each box's tile, both in frame pixels.
    """
    side = np.concatenate([tiles[:, 2:] - tiles[:, :2]] * 2, axis=1)  # (N, 4) w, h, w, h
    near = np.abs(det - tiles) <= tolerance * side
    inner = np.stack([tiles[:, 0] > 0, tiles[:, 1] > 0, tiles[:, 2] < width, tiles[:, 3] < height], axis=1)
    return (near & inner).any(axis=1)
