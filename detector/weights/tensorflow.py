"""TensorFlow 1.x frozen graph (``.pb``) importer: reads the GraphDef protobuf without TensorFlow.

Field numbers (graph.proto, node_def.proto, attr_value.proto, tensor.proto):
GraphDef.node = 1; NodeDef: name 1, op 2, attr 5 (map entry: key 1, value 2);
AttrValue: f 4, shape 7, tensor 8; TensorProto: dtype 1, tensor_shape 2 (dim 2: size 1),
tensor_content 4, float_val 5.

AIZOO's graph is the Keras model frozen in a second session (every scope carries a
``_1`` suffix): NHWC, conv kernels HWIO in ``<layer>_1/kernel`` Consts, BatchNorm kept
separate as ``FusedBatchNorm`` over ``<layer>_bn_1/{gamma,beta,moving_mean,moving_variance}``,
'SAME' padding (equal to the model's explicit 1-pixel padding for 3x3 stride-1 kernels).
Nothing in the graph is executed: only Const values and a few attributes are read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from detector.errors import WeightsError
from detector.weights import _protobuf as pb
from detector.weights._keras_names import aizoo_key
from detector.weights.convert import RawWeights
from detector.weights.limits import admit, read_bounded

_FLOAT_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 19: np.dtype("<f2")}  # DT_FLOAT, DT_DOUBLE, DT_HALF
_OP_NAME = re.compile(rb"^[A-Z][A-Za-z0-9_]*$")
_BATCH_NORM_OPS = {"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"}
_TF_DEFAULT_BN_EPS = 1e-4


def _node(data: memoryview) -> tuple[str, str, dict[str, memoryview | int]]:
    name, op, attrs = "", "", {}
    for num, wire, val in pb.fields(data):
        if num == 1 and wire == pb.LEN:
            name = bytes(val).decode("utf-8", "replace")
        elif num == 2 and wire == pb.LEN:
            op = bytes(val).decode("utf-8", "replace")
        elif num == 5 and wire == pb.LEN:
            key, value = "", None
            for enum, ewire, eval_ in pb.fields(val):
                if enum == 1 and ewire == pb.LEN:
                    key = bytes(eval_).decode("utf-8", "replace")
                elif enum == 2:
                    value = eval_
            if value is not None:
                attrs[key] = value
    return name, op, attrs


def _attr(attrs: dict[str, memoryview | int], name: str, field_number: int) -> int | memoryview | None:
    """One field of the AttrValue ``name`` (field 4 for a float, 7 for a shape, 8 for a tensor)."""
    value = attrs.get(name)
    if not isinstance(value, memoryview):
        return None
    for num, _wire, val in pb.fields(value):
        if num == field_number:
            return val
    return None


def _shape(data: memoryview) -> list[int]:
    dims = []
    for num, wire, val in pb.fields(data):
        if num == 2 and wire == pb.LEN:
            size = 0
            for dnum, dwire, dval in pb.fields(val):
                if dnum == 1 and dwire == pb.VARINT:
                    size = pb.signed64(int(dval))
            dims.append(size)
    return dims


def _tensor(data: memoryview, admit_shape: Callable[[list[int]], bool]) -> np.ndarray | None:
    """A float TensorProto's value (float32); None for other dtypes, or when ``admit_shape``
    (called with the declared shape before anything is allocated) says to skip it."""
    dtype_enum, shape, content, float_vals = 0, [], None, []
    for num, wire, val in pb.fields(data):
        if num == 1 and wire == pb.VARINT:
            dtype_enum = int(val)
        elif num == 2 and wire == pb.LEN:
            shape = _shape(val)
        elif num == 4 and wire == pb.LEN:
            content = val
        elif num == 5:
            float_vals.append(val)
    dtype = _FLOAT_DTYPES.get(dtype_enum)
    if dtype is None or not admit_shape(shape):
        return None
    count = math.prod(shape)  # admit_shape checked it against the model: small and non-negative
    if content is not None:
        if len(content) != count * dtype.itemsize:
            raise pb.ProtobufError(f"tensor of shape {shape} holds {len(content)} bytes")
        return np.frombuffer(content, dtype=dtype).astype(np.float32).reshape(shape)
    flat = pb.floats(float_vals)  # only DT_FLOAT keeps small values in float_val
    if flat.size == 1 and count > 1:  # a splat: one value for the whole (checked) tensor
        flat = np.full(count, flat[0], np.float32)
    if flat.size != count:
        raise pb.ProtobufError(f"tensor of shape {shape} holds {flat.size} values")
    return flat.reshape(shape)


def sniff(head: bytes, path: Path) -> bool:
    """A GraphDef starts with a NodeDef: its name (field 1), then its op (field 2)."""
    first = pb.leading_fields(head, 1)
    if not first or first[0][:2] != (1, pb.LEN):
        return False
    node = pb.leading_fields(first[0][2], 2)
    return (
        len(node) == 2
        and [f[:2] for f in node] == [(1, pb.LEN), (2, pb.LEN)]
        and bool(_OP_NAME.match(bytes(node[1][2])))
    )


def read(path: Path) -> RawWeights:
    tensors: dict[str, np.ndarray] = {}
    eps: set[float] = set()
    input_size = None
    try:
        for num, wire, val in pb.fields(read_bounded(path)):
            if num != 1 or wire != pb.LEN:
                continue
            name, op, attrs = _node(val)
            key = aizoo_key(name) if op == "Const" else None
            if key is not None and isinstance(value := _attr(attrs, "value", 8), memoryview):
                tensor = _tensor(value, lambda shape, key=key: admit(path, key, shape, layout="HWIO"))
                if tensor is not None:
                    tensors[key] = tensor
            elif op in _BATCH_NORM_OPS:
                bits = _attr(attrs, "epsilon", 4)
                eps.add(float(np.array([bits], "<u4").view("<f4")[0]) if isinstance(bits, int) else _TF_DEFAULT_BN_EPS)
            elif (
                op == "Placeholder" and input_size is None and isinstance(shape := _attr(attrs, "shape", 7), memoryview)
            ):
                dims = _shape(shape)
                if len(dims) == 4 and dims[1] == dims[2] > 0:
                    input_size = dims[1]
    except pb.ProtobufError as exc:
        raise WeightsError(path, f"not a valid TensorFlow graph ({exc}); is the file truncated?") from None
    if not tensors:
        raise WeightsError(path, "the TensorFlow graph holds no AIZOO layer weights")
    if len(eps) > 1:
        raise WeightsError(path, f"the graph's BatchNorm layers use different epsilons {sorted(eps)}")
    return RawWeights(
        path=path,
        format="tensorflow",
        tensors=tensors,
        layout="HWIO",
        bn_eps=eps.pop() if eps else 1e-3,
        input_size=input_size,
    )
