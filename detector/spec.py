"""What defines a model: a small frozen dataclass per published variant (timm style)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

ANCHOR_SIZES = ((0.04, 0.056), (0.08, 0.11), (0.16, 0.22), (0.32, 0.45), (0.64, 0.72))
ANCHOR_RATIOS = (1.0, 0.62, 0.42)

# The classes, in the order of the model's class head: the one place they are spelled. Every
# masked/unmasked count reads label index MASK_INDEX as "masked", so a weight file that names
# or orders its classes otherwise is refused (see :func:`check_class_names`), never followed.
MASK = "Mask"
NO_MASK = "NoMask"
CLASS_NAMES: tuple[str, ...] = (MASK, NO_MASK)
MASK_INDEX = CLASS_NAMES.index(MASK)


def is_masked(labels: int | np.ndarray) -> bool | np.ndarray:
    """Whether label indices (an ``int`` or an integer array) mean a masked face."""
    return labels == MASK_INDEX


def check_class_names(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple if they are :data:`CLASS_NAMES` exactly; else ``ValueError`` naming both."""
    found = tuple(names)
    if found != CLASS_NAMES:
        raise ValueError(
            f"class_names {list(found)} differ from {list(CLASS_NAMES)}: a renamed or reordered list "
            f"would invert the masked counts"
        )
    return found


@dataclass(frozen=True)
class ModelSpec:
    """The AIZOO SSD's hyper-parameters.

    The backbone is eight 3x3 convolutions (``backbone_channels``), each but the last
    two followed by a 2x2/2 max-pool in ceil mode (Caffe's and Keras' ``same``
    rounding); the last convolution has no padding. Heads read the outputs of
    backbone layers ``head_sources``.
    """

    name: str
    input_size: int
    backbone_channels: tuple[int, ...] = (32, 64, 64, 64, 128, 128, 64, 64)
    head_sources: tuple[int, ...] = (3, 4, 5, 6, 7)
    head_channels: int = 64
    anchor_sizes: tuple[tuple[float, ...], ...] = ANCHOR_SIZES
    anchor_ratios: tuple[float, ...] = ANCHOR_RATIOS
    variances: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    class_names: tuple[str, ...] = CLASS_NAMES  # always CLASS_NAMES: checked, so a file cannot change them

    def __post_init__(self) -> None:
        check_class_names(self.class_names)

    @property
    def anchors_per_cell(self) -> int:
        return len(self.anchor_sizes[0]) + len(self.anchor_ratios) - 1

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def feature_map_sizes(self) -> tuple[int, ...]:
        """Side of each head's square feature map, e.g. (33, 17, 9, 5, 3) at 260."""
        side = self.input_size
        sides = []
        n = len(self.backbone_channels)
        for i in range(n):
            if i == n - 1:
                side -= 2  # unpadded 3x3
            sides.append(side)
            if i < n - 2:
                side = math.ceil(side / 2)
        return tuple(sides[i] for i in self.head_sources)

    @property
    def conv_shapes(self) -> dict[str, tuple[int, int, int, int]]:
        """OIHW kernel shape of every convolution, by module path (biases: ``(O,)``).

        The model's state dict, described without torch (the driver checks and ships
        weights as numpy arrays; only the workers that run the model import torch).
        """
        chans = self.backbone_channels
        shapes = {f"backbone.{i}": (cout, cin, 3, 3) for i, (cin, cout) in enumerate(zip((3, *chans[:-1]), chans))}
        for j, i in enumerate(self.head_sources):
            for kind, out in (("cls", self.anchors_per_cell * self.num_classes), ("loc", self.anchors_per_cell * 4)):
                shapes[f"{kind}_heads.{j}.insert"] = (self.head_channels, chans[i], 3, 3)
                shapes[f"{kind}_heads.{j}.out"] = (out, self.head_channels, 3, 3)
        return shapes

    @property
    def num_anchors(self) -> int:
        return sum(s * s for s in self.feature_map_sizes) * self.anchors_per_cell


SPECS: dict[str, ModelSpec] = {
    "aizoo-260": ModelSpec(name="aizoo-260", input_size=260),
    "aizoo-360": ModelSpec(name="aizoo-360", input_size=360),
}


def spec_for_input_size(size: int) -> ModelSpec:
    for spec in SPECS.values():
        if spec.input_size == size:
            return spec
    return ModelSpec(name=f"aizoo-{size}", input_size=size)
