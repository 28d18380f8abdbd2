"""Weight importers: one registry, format detected from the file's content.

Each importer reads a published file into :class:`RawWeights` without the original
framework and without executing anything from the file; :mod:`.convert` turns that
into the model's state dict.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector.errors import WeightsError, one_line
from detector.spec import ModelSpec, spec_for_input_size
from detector.weights import caffe, keras, mxnet, native, paddle, pytorch, tensorflow, tflite
from detector.weights.convert import RawWeights, from_state_dict, model_from_state, to_state_dict
from detector.weights.limits import check_file_size, check_input_size, read_bounded

if TYPE_CHECKING:
    from detector.model import AizooSSD

logger = logging.getLogger(__name__)

_SNIFF_BYTES = 4096


@dataclass(frozen=True)
class Importer:
    """A weight format: ``sniff(head, path)`` recognises it, ``read(path)`` imports it."""

    name: str
    description: str
    sniff: Callable[[bytes, Path], bool]
    read: Callable[[Path], RawWeights]


IMPORTERS: dict[str, Importer] = {
    imp.name: imp
    for imp in (
        Importer("native", "maskjobs .safetensors with model metadata", native.sniff, native.read),
        Importer("pytorch", "PyTorch .pth (MMdnn whole-module pickle or state dict)", pytorch.sniff, pytorch.read),
        Importer("caffe", "Caffe .prototxt + .caffemodel", caffe.sniff, caffe.read),
        Importer("tensorflow", "TensorFlow 1.x frozen graph .pb", tensorflow.sniff, tensorflow.read),
        Importer("tflite", "TensorFlow Lite .tflite", tflite.sniff, tflite.read),
        Importer("mxnet", "MXNet Gluon .params (NDArray list)", mxnet.sniff, mxnet.read),
        Importer("paddle", "PaddlePaddle __model__ + __params__", paddle.sniff, paddle.read),
        Importer("keras", "Keras 2.x .hdf5 (+ architecture .json)", keras.sniff, keras.read),
    )
}


@dataclass(frozen=True)
class ConvertedWeights:
    """A weight file converted to the model's state dict, as numpy arrays (no torch needed).

    Attributes:
        state: ``{"<module>.weight": (O, I, 3, 3), "<module>.bias": (O,)}`` float32, OIHW,
            BatchNorm folded; loads into ``AizooSSD(spec)`` with ``strict=True``.
    """

    spec: ModelSpec
    state: dict[str, np.ndarray]
    path: Path
    format: str
    sha256: str
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class LoadedWeights:
    """A ready model and where it came from."""

    model: AizooSSD
    spec: ModelSpec
    path: Path
    format: str
    sha256: str
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def detect_format(path: Path) -> Importer:
    """The importer for ``path``, judged by its content (the extension only breaks ties)."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(path, "no such weight file")
    if path.is_dir():
        raise WeightsError(path, "is a directory, not a weight file")
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head:
        raise WeightsError(path, "the weight file is empty")
    for imp in IMPORTERS.values():
        if imp.sniff(head, path):
            return imp
    raise WeightsError(path, f"not a known weight format (known: {', '.join(IMPORTERS)})")


def _declared_input_size(path: Path) -> int | None:
    """The input side a Keras JSON with the same stem declares (AIZOO ships one per model)."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        side = keras.architecture(json.loads(read_bounded(sidecar).decode("utf-8")))[0]
    except (ValueError, AttributeError, TypeError, RecursionError):
        logger.warning("%s: ignoring an unreadable Keras JSON beside the weights", sidecar)
        return None
    return None if side is None else check_input_size(sidecar, side, source="the Keras JSON")


# What a corrupt file can make a reader raise beyond its own checks; each becomes one line.
_READ_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, EOFError,
                RecursionError, UnicodeError, struct.error, zipfile.BadZipFile, OSError, MemoryError)


def read_weights(path: Path) -> RawWeights:
    """Reads any supported weight file into :class:`RawWeights`.

    The file is untrusted: whatever it holds, this returns the model's tensors or raises one
    :class:`WeightsError` line naming the file, and allocates no more than
    :mod:`detector.weights.limits` allows."""
    path = Path(path)
    importer = detect_format(path)
    check_file_size(path)
    try:
        return importer.read(path)
    except WeightsError:
        raise
    except _READ_ERRORS as exc:  # a reader's own checks missed this corruption: still one line
        logger.debug("%s: %s reader failed", path, importer.name, exc_info=True)
        raise WeightsError(path, f"not a readable {importer.name} weight file ({type(exc).__name__}: "
                                 f"{one_line(exc, limit=120)})") from None


def load_weights(path: Path | str, *, input_size: int | None = None) -> LoadedWeights:
    """Loads a model from any supported file; BatchNorm folded, eval mode.

    The input side is ``input_size`` if given, else what the file (or a Keras JSON with
    the same stem) declares, else 260.
    """
    return from_raw(read_weights(Path(path)), input_size=input_size)


def from_raw(raw: RawWeights, *, input_size: int | None = None) -> LoadedWeights:
    """A ready model from tensors already read (see :func:`load_weights`)."""
    return build(convert(raw, input_size=input_size))


def convert_weights(path: Path | str, *, input_size: int | None = None) -> ConvertedWeights:
    """:func:`load_weights` up to the state dict, without torch (input side as there)."""
    return convert(read_weights(Path(path)), input_size=input_size)


def convert(raw: RawWeights, *, input_size: int | None = None) -> ConvertedWeights:
    """Tensors already read -> the model's state dict, checked against its spec."""
    if input_size:
        size = check_input_size(raw.path, input_size, source="the requested model")
    elif raw.input_size:
        size = check_input_size(raw.path, raw.input_size, source=f"the {raw.format} file")
    else:
        size = _declared_input_size(raw.path) or 260
    spec = dataclasses.replace(spec_for_input_size(size), **native.spec_fields(raw.metadata))
    state = to_state_dict(raw, spec)
    logger.info("converted %s weights from %s (input %d)", raw.format, raw.path, size)
    return ConvertedWeights(spec, state, raw.path, raw.format, sha256_of(raw.path), raw.metadata)


def build(weights: ConvertedWeights) -> LoadedWeights:
    """The model for converted weights, loaded strictly, in eval mode."""
    model = model_from_state(weights.state, weights.spec)
    return LoadedWeights(
        model=model, spec=weights.spec, path=weights.path, format=weights.format, sha256=weights.sha256,
        metadata=weights.metadata,
    )


def save_native(loaded: LoadedWeights, out: Path | str) -> Path:
    """Writes ``loaded`` as a native ``.safetensors`` file at ``out`` and returns its path.

    ``out`` is written in place (:func:`detector.weights.native.write`): callers that need it
    to appear whole wrap this in :func:`sinks.atomic.atomic_output`."""
    metadata = native.metadata_for(
        loaded.spec,
        source_format=loaded.format,
        source_file=loaded.path.name,
        source_sha256=loaded.sha256,
    )
    if loaded.format == "native":  # re-saving a native file keeps the original source's identity
        metadata.update({k: v for k, v in loaded.metadata.items() if k.startswith("source_")})
    return native.write(from_state_dict(loaded.model), metadata, Path(out))
