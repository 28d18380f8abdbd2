"""PaddlePaddle inference model importer (``__model__`` + ``__params__``), without Paddle.

``__model__`` is a ProgramDesc protobuf (framework.proto): ProgramDesc.blocks 1;
BlockDesc.vars 3, ops 4; VarDesc: name 1, type 2, persistable 3; VarType: type 1
(LOD_TENSOR = 7), lod_tensor 3 -> LoDTensorDesc.tensor 1 -> TensorDesc: data_type 1,
dims 2; OpDesc: outputs 2 (Var: parameter 1, arguments 2), type 3.

``__params__`` is ``save_combine``'s stream of the program's persistable LoD tensors,
in the order ``fluid.io.save_vars`` writes them: sorted by variable name. Each is
``uint32`` version 0, ``uint64`` LoD level count (each level a ``uint64`` byte size and
its offsets), ``uint32`` tensor version 0, ``int32`` TensorDesc size, the TensorDesc
and the raw data. Every tensor's stored dims are checked against the program's.

AIZOO's model: NCHW, kernels OIHW named ``<layer>_weights``, biases ``<layer>_bias``
(added by ``elementwise_add``), BatchNorm merged.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.errors import WeightsError
from detector.weights._bytes import ByteReader
from detector.weights import _protobuf as pb
from detector.weights.convert import RawWeights
from detector.weights.limits import MAX_DIMS, admit, read_bounded

MODEL_FILE, PARAMS_FILE = "__model__", "__params__"
_LOD_TENSOR = 7
_DTYPES = {0: "?", 1: "<i2", 2: "<i4", 3: "<i8", 4: "<f2", 5: "<f4", 6: "<f8", 20: "u1", 21: "i1"}
_MAX_DESC = 1 << 16


@dataclass(frozen=True)
class _Var:
    name: str
    persistable: bool
    lod_tensor: bool
    dtype: int
    dims: tuple[int, ...]


def _var(data: memoryview) -> _Var:
    name, persistable, lod_tensor, dtype, dims = "", False, False, -1, []
    for num, wire, val in pb.fields(data):
        if num == 1 and wire == pb.LEN:
            name = bytes(val).decode("utf-8", "replace")
        elif num == 3 and wire == pb.VARINT:
            persistable = bool(val)
        elif num == 2 and wire == pb.LEN:
            for tnum, twire, tval in pb.fields(val):
                if tnum == 1 and twire == pb.VARINT:
                    lod_tensor = int(tval) == _LOD_TENSOR
                elif tnum == 3 and twire == pb.LEN:
                    for lnum, lwire, lval in pb.fields(tval):
                        if lnum == 1 and lwire == pb.LEN:
                            dtype, dims = _tensor_desc(lval)
    return _Var(name, persistable, lod_tensor, dtype, tuple(dims))


def _tensor_desc(data: memoryview) -> tuple[int, list[int]]:
    dtype, dims = -1, []
    for num, wire, val in pb.fields(data):
        if num == 1 and wire == pb.VARINT:
            dtype = int(val)
        elif num == 2:
            dims.extend(pb.signed64(d) for d in (pb.packed_varints(val) if wire == pb.LEN else [int(val)]))
    return dtype, dims


def _program(data: bytes) -> tuple[list[_Var], int | None]:
    """The first block's variables, and the input side the feed target declares."""
    variables: list[_Var] = []
    feed_targets: list[str] = []
    for num, wire, block in pb.fields(data):
        if num != 1 or wire != pb.LEN:
            continue
        for bnum, bwire, bval in pb.fields(block):
            if bnum == 3 and bwire == pb.LEN:
                variables.append(_var(bval))
            elif bnum == 4 and bwire == pb.LEN:
                op_type, outputs = "", []
                for onum, owire, oval in pb.fields(bval):
                    if onum == 3 and owire == pb.LEN:
                        op_type = bytes(oval).decode("utf-8", "replace")
                    elif onum == 2 and owire == pb.LEN:
                        outputs += [bytes(v).decode("utf-8", "replace") for n, w, v in pb.fields(oval) if n == 2]
                if op_type == "feed":
                    feed_targets += outputs
        break  # the inference program lives in block 0
    dims = {v.name: v.dims for v in variables}
    side = None
    if feed_targets and len(d := dims.get(feed_targets[0], ())) == 4 and d[2] == d[3] > 0:
        side = d[2]
    return variables, side


def _lod_tensor_header(s: ByteReader) -> tuple[int, list[int]]:
    """One LoDTensor record's header: ``(dtype, dims)``; the stream is left at its data."""
    if (version := s.unpack("<I")) != 0:
        raise ValueError(f"LoDTensor version {version} at byte {s.pos - 4}")
    for _ in range(s.unpack("<Q")):
        s.take(s.unpack("<Q"))  # LoD offsets: not needed for weights
    if (version := s.unpack("<I")) != 0:
        raise ValueError(f"tensor version {version} at byte {s.pos - 4}")
    desc_size = s.unpack("<i")
    if not 0 < desc_size <= _MAX_DESC:
        raise ValueError(f"tensor description of {desc_size} bytes")
    dtype, dims = _tensor_desc(s.take(desc_size))
    if dtype not in _DTYPES or any(d < 0 for d in dims) or len(dims) > MAX_DIMS:
        raise ValueError(f"tensor of dtype {dtype} and dims {dims}")
    return dtype, dims


def pair(path: Path) -> tuple[Path, Path]:
    """``(__model__, __params__)`` for a path naming either file."""
    if path.name == PARAMS_FILE:
        return path.with_name(MODEL_FILE), path
    return path, path.with_name(PARAMS_FILE)


def sniff(head: bytes, path: Path) -> bool:
    """A ProgramDesc starts with block 0 (idx 0, then parent_idx); a params stream with a LoDTensor."""
    first = pb.leading_fields(head, 1)
    if first and first[0][:2] == (1, pb.LEN):
        block = pb.leading_fields(first[0][2], 2)
        if [f[:2] for f in block] == [(1, pb.VARINT), (2, pb.VARINT)] and block[0][2] == 0:
            return True
    try:
        _lod_tensor_header(ByteReader(head))
    except (ValueError, struct.error):  # ProtobufError is a ValueError
        return False
    return True


def read(path: Path) -> RawWeights:
    model_path, params_path = pair(path)
    for p, what in ((model_path, "program"), (params_path, "parameters")):
        if not p.is_file():
            raise WeightsError(p, f"the Paddle {what} file beside {path.name} is missing")
    try:
        variables, input_size = _program(read_bounded(model_path))
    except pb.ProtobufError as exc:
        raise WeightsError(model_path, f"not a valid Paddle program ({exc}); is the file truncated?") from None
    stored = sorted((v for v in variables if v.persistable and v.lod_tensor), key=lambda v: v.name)
    if not stored:
        raise WeightsError(model_path, "the Paddle program declares no persistable tensors")
    stream = ByteReader(read_bounded(params_path))
    tensors: dict[str, np.ndarray] = {}
    for var in stored:
        try:
            dtype, dims = _lod_tensor_header(stream)
            data = stream.take(math.prod(dims) * np.dtype(_DTYPES[dtype]).itemsize)
        except (ValueError, struct.error) as exc:  # ProtobufError is a ValueError
            raise WeightsError(params_path, f"tensor {var.name!r}: {exc}; is the file truncated?") from None
        if tuple(dims) != var.dims:
            raise WeightsError(
                params_path,
                f"tensor {var.name!r} is stored with dims {tuple(dims)}, the program declares {var.dims}: "
                f"the parameters do not belong to {model_path.name}",
            )
        for suffix, leaf in (("_weights", "weight"), ("_bias", "bias")):
            key = f"{var.name[: -len(suffix)]}.{leaf}"
            if var.name.endswith(suffix) and admit(params_path, key, dims, layout="OIHW"):
                tensors[key] = np.frombuffer(data, dtype=_DTYPES[dtype]).reshape(dims).astype(np.float32)
    if stream.pos != len(stream.data):
        raise WeightsError(
            params_path, f"{len(stream.data) - stream.pos} bytes follow the last tensor the program declares"
        )
    return RawWeights(path=params_path, format="paddle", tensors=tensors, layout="OIHW", input_size=input_size)
