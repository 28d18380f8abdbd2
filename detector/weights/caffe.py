"""Caffe ``.caffemodel`` importer: reads the NetParameter protobuf without Caffe.

Field numbers (caffe.proto): NetParameter.layer = 100 (LayerParameter: name 1, type 2,
blobs 7), legacy NetParameter.layers = 2 (V1LayerParameter: name 4, blobs 6);
BlobProto: num/channels/height/width 1-4, data 5, shape 7 (BlobShape.dim 1).
The published model has BatchNorm merged into its convolutions (kernels OIHW).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from detector.errors import WeightsError
from detector.weights import _protobuf as pb
from detector.weights.convert import RawWeights
from detector.weights.limits import MAX_DIMS, admit, read_bounded


def _blob(data: memoryview) -> np.ndarray:
    legacy = [0, 0, 0, 0]
    shape: list[int] = []
    values: list[int | memoryview] = []
    for num, wire, val in pb.fields(data):
        if 1 <= num <= 4 and wire == pb.VARINT:
            legacy[num - 1] = int(val)
        elif num == 5:
            values.append(val)
        elif num == 7 and wire == pb.LEN:
            for dnum, dwire, dval in pb.fields(val):
                if dnum == 1:
                    dims = pb.packed_varints(dval) if dwire == pb.LEN else [int(dval)]
                    shape.extend(pb.signed64(d) for d in dims)
    arr = pb.floats(values)
    if not shape:
        shape = [d for d in legacy if d] or [arr.size]
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape) or math.prod(shape) != arr.size:
        raise pb.ProtobufError(f"blob of shape {shape} holds {arr.size} values")
    return arr.reshape(shape)


def _layers(data: bytes) -> dict[str, list[np.ndarray]]:
    layers: dict[str, list[np.ndarray]] = {}
    for num, wire, val in pb.fields(data):
        if wire != pb.LEN or num not in (2, 100):
            continue
        name_field, blob_field = (1, 7) if num == 100 else (4, 6)
        name, blobs = "", []
        for lnum, lwire, lval in pb.fields(val):
            if lnum == name_field and lwire == pb.LEN:
                name = bytes(lval).decode("utf-8", "replace")
            elif lnum == blob_field and lwire == pb.LEN:
                blobs.append(_blob(lval))
        if blobs:
            layers[name] = blobs
    return layers


def caffemodel_path(path: Path) -> Path:
    """The ``.caffemodel`` for a path that names either file of the Caffe pair."""
    if path.suffix == ".prototxt":
        return path.with_suffix(".caffemodel")
    return path


def sniff(head: bytes, path: Path) -> bool:
    if path.suffix == ".prototxt":
        return True
    try:
        for num, wire, _ in pb.fields(head):
            if num == 100 and wire == pb.LEN:
                return True
    except pb.ProtobufError:
        return False  # the head cuts a field short: judge by what was seen
    return False


def read(path: Path) -> RawWeights:
    model_path = caffemodel_path(path)
    if not model_path.is_file():
        raise WeightsError(model_path, "the Caffe weights (.caffemodel) beside the prototxt are missing")
    try:
        layers = _layers(read_bounded(model_path))
    except pb.ProtobufError as exc:
        raise WeightsError(model_path, f"not a valid Caffe model ({exc}); is the file truncated?") from None
    if not layers:
        raise WeightsError(model_path, "the Caffe model holds no layer with weights")
    tensors: dict[str, np.ndarray] = {}
    for name, blobs in layers.items():
        for leaf, blob in zip(("weight", "bias"), blobs):
            if admit(model_path, f"{name}.{leaf}", blob.shape, layout="OIHW"):
                tensors[f"{name}.{leaf}"] = blob
    return RawWeights(path=model_path, format="caffe", tensors=tensors, layout="OIHW")
