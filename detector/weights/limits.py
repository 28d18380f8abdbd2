"""Bounds every importer applies before it allocates: weight files are untrusted input.

A weight file declares its tensors' shapes, and several formats can declare far more
elements than they store (a TensorFlow splat, a zero-stride PyTorch tensor, a never-written
HDF5 dataset). The architecture is known before a file is opened, so each importer checks a
tensor's declared shape against it (:func:`admit`) before reading or expanding its data, and
skips tensors the model has no use for without reading them. Together with a cap on the
file size (:func:`read_bounded`), the memory an import takes is bounded by
``MAX_FILE_BYTES`` plus a few times the model's own size (1,012,632 parameters), whatever
the file says.

Keys are :class:`~detector.weights.convert.RawWeights` keys (AIZOO's layer names):
``conv2d_0.weight`` (a 4-D kernel in the importer's layout), ``conv2d_0.bias`` and
``conv2d_0_bn.{weight,bias,running_mean,running_var}`` (one value per output channel).
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

from detector.errors import WeightsError
from detector.spec import ModelSpec, spec_for_input_size

MAX_FILE_BYTES = 256 << 20  # AIZOO's files are 2-4 MB; a generous bound for any re-export
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 1024  # px; AIZOO publishes 260 and 360
MAX_DIMS = 8

# Axes' order of a conv kernel in each layout -> the OIHW axis each one holds.
_LAYOUT_AXES = {"OIHW": (0, 1, 2, 3), "HWIO": (2, 3, 1, 0), "OHWI": (0, 2, 3, 1)}
_KEY = re.compile(r"^(?P<layer>[a-z0-9_]+?)(?P<bn>_bn)?\.(?P<leaf>weight|bias|running_mean|running_var)$")


@lru_cache(maxsize=8)
def _kernels(spec: ModelSpec) -> dict[str, tuple[int, int, int, int]]:
    from detector.weights.convert import aizoo_layer_names

    shapes = spec.conv_shapes
    return {src: shapes[dst] for src, dst in aizoo_layer_names(spec).items()}


def default_spec() -> ModelSpec:
    """The architecture every published format describes (its conv shapes do not depend on the input side)."""
    return spec_for_input_size(260)


def element_count(path: Path | str, shape: tuple[int, ...] | list[int]) -> int:
    """The number of elements of ``shape``, exact (no integer overflow); refuses negative or odd shapes."""
    dims = [int(d) for d in shape]
    if len(dims) > MAX_DIMS or any(d < 0 for d in dims):
        raise WeightsError(path, f"a tensor declares the impossible shape {tuple(dims)}")
    return math.prod(dims)


def expected_shape(key: str, layout: str = "OIHW", spec: ModelSpec | None = None) -> tuple[int, ...] | None:
    """The shape the model expects for ``key`` in ``layout`` (kernels) or ``(O,)`` (per-channel
    vectors); None when the model has no such tensor (the importer then skips it unread)."""
    m = _KEY.match(key)
    if m is None:
        return None
    kernel = _kernels(spec or default_spec()).get(m["layer"])
    if kernel is None:
        return None
    if m["bn"]:
        return (kernel[0],)
    if m["leaf"] == "weight":
        axes = _LAYOUT_AXES.get(layout)
        if axes is None:
            raise ValueError(f"unknown kernel layout {layout!r}")
        return tuple(kernel[a] for a in axes)
    if m["leaf"] == "bias":
        return (kernel[0],)
    return None


def admit(
    path: Path | str, key: str, shape: tuple[int, ...] | list[int], *, layout: str = "OIHW",
    spec: ModelSpec | None = None,
) -> bool:
    """Whether to read tensor ``key`` of declared ``shape``: True if the model uses it and the
    shape fits, False if the model has no such tensor (skip it unread); a tensor the model
    uses with any other shape raises :class:`WeightsError` (nothing has been allocated yet).

    A kernel must match exactly (in ``layout``); a per-channel vector must hold one value per
    output channel (``(O,)``, or e.g. Caffe's ``(1, 1, 1, O)``)."""
    want = expected_shape(key, layout, spec)
    count = element_count(path, shape)
    if want is None:
        return False
    got = tuple(int(d) for d in shape)
    layer = key.rsplit(".", 1)[0]
    if key.endswith(".weight") and "_bn." not in key:
        if got != want:
            in_layout = "" if layout == "OIHW" else f" ({layout})"
            raise WeightsError(path, f"layer {layer!r} has shape {got}{in_layout}, the model expects {want}")
    elif count != want[0] or sum(d != 1 for d in got) > 1:
        raise WeightsError(path, f"{key!r} has shape {got}, the model expects {want}")
    return True


def check_input_size(path: Path | str, size: int, *, source: str) -> int:
    """``size`` if it is a model input side this package builds, else :class:`WeightsError`."""
    try:
        side = int(size)
    except (TypeError, ValueError):
        raise WeightsError(path, f"{source} declares an input size {size!r} that is not a number") from None
    if not MIN_INPUT_SIZE <= side <= MAX_INPUT_SIZE:
        raise WeightsError(
            path, f"{source} declares an input of {side} px; accepted: {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}"
        )
    return side


def check_file_size(path: Path | str) -> int:
    """The size of ``path`` in bytes; :class:`WeightsError` above :data:`MAX_FILE_BYTES`."""
    try:
        size = Path(path).stat().st_size
    except OSError as exc:
        raise WeightsError(path, f"cannot read the file ({exc.strerror or exc})") from None
    if size > MAX_FILE_BYTES:
        raise WeightsError(
            path, f"the file is {size / 2**20:.0f} MiB; a weight file of this model is at most {MAX_FILE_BYTES >> 20} MiB"
        )
    return size


def read_bounded(path: Path | str) -> bytes:
    """The bytes of ``path``, refused above :data:`MAX_FILE_BYTES` before any is read."""
    check_file_size(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise WeightsError(path, f"cannot read the file ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:  # it grew since the check
        raise WeightsError(path, f"the file is larger than {MAX_FILE_BYTES >> 20} MiB")
    return data
