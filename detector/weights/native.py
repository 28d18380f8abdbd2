"""maskjobs' native weight format: safetensors plus metadata that describes the model.

Tensors: AIZOO's layer names (``conv2d_0.weight``, ``cls_0_conv.bias`` ...), float32,
kernels OIHW, BatchNorm folded. ``__metadata__`` (strings; JSON for lists):

    maskjobs_format  "aizoo-ssd"        format_version  "1"
    input_size       "260"              anchor_sizes    "[[0.04, 0.056], ...]"
    anchor_ratios    "[1.0, 0.62, 0.42]"  variances     "[0.1, 0.1, 0.2, 0.2]"
    class_names      '["Mask", "NoMask"]'  (must be detector.spec.CLASS_NAMES, in that order)
    source_format    "caffe"            source_file     "face_mask_detection.caffemodel"
    source_sha256    "<hex digest of the file imported>"

A plain safetensors file with AIZOO tensor names (no metadata) loads too.
safetensors is a data-only format: reading it executes nothing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from detector.errors import WeightsError, one_line
from detector.spec import ModelSpec, check_class_names
from detector.weights.convert import RawWeights
from detector.weights.limits import admit, check_file_size, default_spec

FORMAT_NAME = "aizoo-ssd"
FORMAT_VERSION = 1
_MAX_HEADER = 100 << 20


def sniff(head: bytes, path: Path) -> bool:
    """An 8-byte little-endian header size, then the JSON header."""
    if len(head) < 10:
        return False
    size = int.from_bytes(head[:8], "little")
    return 2 <= size <= _MAX_HEADER and head[8:9] == b"{"


def metadata_for(spec: ModelSpec, *, source_format: str, source_file: str, source_sha256: str) -> dict[str, str]:
    return {
        "maskjobs_format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "input_size": str(spec.input_size),
        "anchor_sizes": json.dumps([list(s) for s in spec.anchor_sizes]),
        "anchor_ratios": json.dumps(list(spec.anchor_ratios)),
        "variances": json.dumps(list(spec.variances)),
        "class_names": json.dumps(list(spec.class_names)),
        "source_format": source_format,
        "source_file": source_file,
        "source_sha256": source_sha256,
    }


def spec_fields(metadata: dict[str, str]) -> dict[str, Any]:
    """The :class:`ModelSpec` fields a native file's metadata sets (anchors, variances, classes)."""
    fields: dict[str, Any] = {}
    if "anchor_sizes" in metadata:
        fields["anchor_sizes"] = tuple(tuple(float(v) for v in s) for s in json.loads(metadata["anchor_sizes"]))
    if "anchor_ratios" in metadata:
        fields["anchor_ratios"] = tuple(float(v) for v in json.loads(metadata["anchor_ratios"]))
    if "variances" in metadata:
        fields["variances"] = tuple(float(v) for v in json.loads(metadata["variances"]))
    if "class_names" in metadata:
        fields["class_names"] = tuple(str(v) for v in json.loads(metadata["class_names"]))  # read() checked them
    return fields


def read(path: Path) -> RawWeights:
    from safetensors import SafetensorError, safe_open

    check_file_size(path)
    tensors: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            spec = _check_metadata(path, metadata)
            for key in f.keys():  # each shape checked against the model before its data is read
                if admit(path, key, tuple(f.get_slice(key).get_shape()), layout="OIHW", spec=spec):
                    tensors[key] = np.asarray(f.get_tensor(key), dtype=np.float32)
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise WeightsError(
            path, f"not a valid safetensors file ({one_line(exc, limit=160)}); is it truncated?"
        ) from None
    input_size = int(metadata["input_size"]) if "input_size" in metadata else None
    return RawWeights(
        path=path, format="native", tensors=tensors, layout="OIHW", input_size=input_size, metadata=metadata
    )


def _check_metadata(path: Path, metadata: dict[str, str]) -> ModelSpec:
    """The architecture ``metadata`` describes; :class:`WeightsError` for a foreign or unreadable one."""
    version = metadata.get("format_version", str(FORMAT_VERSION))
    if metadata.get("maskjobs_format", FORMAT_NAME) != FORMAT_NAME or version != str(FORMAT_VERSION):
        found = f"{metadata.get('maskjobs_format')!r} version {version}"
        raise WeightsError(path, f"metadata says {found}, expected {FORMAT_NAME!r} version {FORMAT_VERSION}")
    _check_classes(path, metadata)
    try:
        if "input_size" in metadata:
            int(metadata["input_size"])
        # fail here, naming the file, rather than when the model is built
        return dataclasses.replace(default_spec(), **spec_fields(metadata))
    except (ValueError, TypeError) as exc:
        raise WeightsError(path, f"unreadable metadata ({one_line(exc, limit=160)})") from None


def _check_classes(path: Path, metadata: dict[str, str]) -> None:
    """Refuses a file whose ``class_names`` are not :data:`~detector.spec.CLASS_NAMES`: label 0 is
    counted as masked everywhere, so following a renamed or reordered list would silently invert
    the masked and unmasked counts."""
    if "class_names" not in metadata:
        return
    try:
        names = json.loads(metadata["class_names"])
        if not isinstance(names, list):
            raise TypeError(f"a JSON list was expected, got {type(names).__name__}")
    except (ValueError, TypeError) as exc:
        raise WeightsError(path, f"unreadable class_names metadata ({exc})") from None
    try:
        check_class_names([str(v) for v in names])
    except ValueError as exc:
        raise WeightsError(path, str(exc)) from None


def write(tensors: dict[str, np.ndarray], metadata: dict[str, str], out: Path) -> Path:
    """Writes ``tensors`` and ``metadata`` to ``out``, in place.

    A caller that needs the file to appear whole or not at all writes to a temporary path
    and moves it into place (``jobs`` uses :func:`sinks.atomic.atomic_output`): detector has
    no output policy of its own.
    """
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(out), metadata=metadata)
    return Path(out)
