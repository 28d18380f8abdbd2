"""MXNet Gluon ``.params`` importer: reads the NDArray-list binary format without MXNet.

Layout (src/ndarray/ndarray.cc, little-endian): ``uint64`` magic 0x112, ``uint64`` reserved,
``uint64`` count, then each NDArray: ``uint32`` magic (V1 0xF993FAC8, V2 ...C9, V3 ...CA),
``int32`` storage type (V2/V3 only; 0 = dense), the shape (``uint32``/``int32`` ndim, then
``int64`` dims), the context (``int32`` device type and id), ``int32`` dtype flag and the
raw data; then ``uint64`` count of names, each a ``uint64`` length and its bytes.

AIZOO's file comes from ``save_parameters``: structural names (``conv_0.weight``,
``conv_3.1.weight`` inside a pool+conv block, ``cls_0_conv.0.weight`` for a head's 3x3
insert conv and ``cls_0_conv.1.weight`` for its output conv); kernels OIHW, BatchNorm
merged. Prefixed names (``conv2d_0weight``, ``arg:conv2d_0.weight``) are read too.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np

from detector.errors import WeightsError
from detector.weights._bytes import ByteReader
from detector.weights.convert import RawWeights
from detector.weights.limits import MAX_DIMS, admit, read_bounded

_LIST_MAGIC = 0x112
_ARRAY_MAGICS = {0xF993FAC8: 1, 0xF993FAC9: 2, 0xF993FACA: 3}
_DTYPES = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8", 7: "?"}

_AIZOO_LAYER = r"conv2d_\d+|(?:cls|loc)_\d+_(?:insert_conv2d|conv)"
_NAME_PATTERNS = (
    (re.compile(rf"^(?P<layer>{_AIZOO_LAYER})\.?(?P<leaf>weight|bias)$"), "{layer}"),
    (re.compile(r"^conv_(?P<i>\d+)(?:\.\d+)?\.(?P<leaf>weight|bias)$"), "conv2d_{i}"),
    (re.compile(r"^(?P<kind>cls|loc)_(?P<j>\d+)_conv\.0\.(?P<leaf>weight|bias)$"), "{kind}_{j}_insert_conv2d"),
    (re.compile(r"^(?P<kind>cls|loc)_(?P<j>\d+)_conv\.1\.(?P<leaf>weight|bias)$"), "{kind}_{j}_conv"),
)


def _array(r: ByteReader) -> np.ndarray:
    magic = r.unpack("<I")
    version = _ARRAY_MAGICS.get(magic)
    if version is None:
        raise ValueError(f"unsupported NDArray header 0x{magic:08x} (pre-1.0 MXNet?)")
    if version >= 2 and (stype := r.unpack("<i")) != 0:
        raise ValueError(f"sparse NDArray (storage type {stype})")
    ndim = r.unpack("<i" if version == 3 else "<I")
    if ndim <= 0:
        return np.zeros(0, np.float32)
    if ndim > MAX_DIMS:
        raise ValueError(f"an NDArray of {ndim} dimensions")
    shape = struct.unpack(f"<{ndim}q", r.take(8 * ndim))
    if any(d < 0 for d in shape):
        raise ValueError(f"an NDArray of shape {shape}")
    r.take(8)  # context: device type, device id
    flag = r.unpack("<i")
    if flag not in _DTYPES:
        raise ValueError(f"unknown NDArray dtype flag {flag}")
    dtype = np.dtype(_DTYPES[flag])
    count = math.prod(shape)
    return np.frombuffer(r.take(count * dtype.itemsize), dtype=dtype).reshape(shape)  # a view: nothing allocated


def _aizoo_key(name: str) -> str | None:
    name = name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name
    for pattern, layer in _NAME_PATTERNS:
        if m := pattern.match(name):
            return f"{layer.format(**m.groupdict())}.{m['leaf']}"
    return None


def load_ndarray_list(path: Path) -> dict[str, np.ndarray]:
    """Every named array of an MXNet ``.params`` / ``nd.save`` file."""
    r = ByteReader(read_bounded(path))
    try:
        if r.unpack("<Q") != _LIST_MAGIC:
            raise WeightsError(path, "not an MXNet NDArray list (bad magic number)")
        r.take(8)
        arrays = [_array(r) for _ in range(r.unpack("<Q"))]
        names = [bytes(r.take(r.unpack("<Q"))).decode("utf-8", "replace") for _ in range(r.unpack("<Q"))]
    except (ValueError, struct.error) as exc:
        raise WeightsError(path, f"not a valid MXNet .params file ({exc}); is the file truncated?") from None
    if len(names) != len(arrays):
        raise WeightsError(path, f"the file holds {len(arrays)} arrays but {len(names)} names")
    return dict(zip(names, arrays, strict=True))


def sniff(head: bytes, path: Path) -> bool:
    return len(head) >= 8 and struct.unpack_from("<Q", head)[0] == _LIST_MAGIC


def read(path: Path) -> RawWeights:
    tensors = {}
    for name, array in load_ndarray_list(path).items():
        key = _aizoo_key(name)
        if key is not None and admit(path, key, array.shape, layout="OIHW"):
            tensors[key] = array.astype(np.float32)
    if not tensors:
        raise WeightsError(path, "the MXNet file holds no AIZOO layer weights")
    return RawWeights(path=path, format="mxnet", tensors=tensors, layout="OIHW")
