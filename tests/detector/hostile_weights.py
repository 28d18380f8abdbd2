"""Hostile weight files, written from scratch or from the published ones (issue 17, items 12-13).

Each builder writes one file (and its companions) into a folder and returns the path a user
would pass to ``--weights``. The files are small: the harm is in what they declare.
"""

from __future__ import annotations

import collections
import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np

HUGE = (60000, 60000)  # 3.6e9 float32 elements: 14.4 GB if anything materialised it

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# -- PyTorch legacy pickle -----------------------------------------------------------------------


class Storage:
    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key, self.data = key, np.ascontiguousarray(data, "<f4").reshape(-1)


class Tensor:
    """A tensor as ``torch.save`` pickles it: ``_rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

    def __init__(self, storage: Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):  # noqa: ANN204 - pickled by reference to torch's own function, never called here
        import torch._utils

        return (torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()))

    @classmethod
    def of(cls, key: str, array: np.ndarray) -> Tensor:
        shape = tuple(int(d) for d in array.shape)
        strides = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
        return cls(Storage(key, array), 0, shape, strides)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: object):  # noqa: ANN201
        if isinstance(obj, Storage):
            import torch

            return ("storage", torch.FloatStorage, obj.key, "cpu", int(obj.data.size))
        return None


def write_legacy_pth(path: Path, tensors: dict[str, Tensor]) -> Path:
    """A PyTorch 0.4-style legacy checkpoint of a state dict (the layout AIZOO's ``.pth`` uses)."""
    storages = list({id(t.storage): t.storage for t in tensors.values()}.values())
    with open(path, "wb") as f:
        for obj in (_LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        _Pickler(f, protocol=2).dump(collections.OrderedDict(tensors))
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q", s.data.size))
            f.write(s.data.tobytes())
    return path


def model_tensors(published_pth: Path) -> dict[str, Tensor]:
    """The published model's tensors (OIHW, BatchNorm separate), one storage each."""
    from detector.weights import read_weights

    return {k: Tensor.of(str(i), v) for i, (k, v) in enumerate(read_weights(published_pth).tensors.items())}


def legacy_with(published_pth: Path, path: Path, **changes: Tensor) -> Path:
    """The published model as a legacy checkpoint, with ``changes`` (``__`` in a name stands for ``.``)."""
    tensors = model_tensors(published_pth)
    tensors.update({k.replace("__", "."): v for k, v in changes.items()})
    return write_legacy_pth(path, tensors)


# -- TensorFlow GraphDef -------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _vint(num: int, value: int) -> bytes:
    return _varint(num << 3) + _varint(value)


def _shape(dims: tuple[int, ...]) -> bytes:
    return b"".join(_len(2, _vint(1, d)) for d in dims)


def _node(name: str, op: str, attrs: dict[str, bytes]) -> bytes:
    body = _len(1, name.encode()) + _len(2, op.encode())
    for key, value in attrs.items():
        body += _len(5, _len(1, key.encode()) + _len(2, value))
    return _len(1, body)


def const_node(name: str, shape: tuple[int, ...], *, content: np.ndarray | None = None,
               float_val: list[float] | None = None) -> bytes:
    tensor = _vint(1, 1) + _len(2, _shape(shape))  # DT_FLOAT
    if content is not None:
        tensor += _len(4, np.ascontiguousarray(content, "<f4").tobytes())
    if float_val is not None:
        tensor += _len(5, np.asarray(float_val, "<f4").tobytes())
    return _node(name, "Const", {"value": _len(8, tensor), "dtype": _vint(6, 1)})


def placeholder_node(name: str, shape: tuple[int, ...]) -> bytes:
    return _node(name, "Placeholder", {"shape": _len(7, _shape(shape)), "dtype": _vint(6, 1)})


_TF_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def tf_name(key: str) -> str:
    """A RawWeights key -> the published graph's Const name (``conv2d_0.weight`` -> ``conv2d_0_1/kernel``)."""
    layer, leaf = key.split(".")
    if layer.endswith("_bn"):
        return f"{layer}_1/{_TF_BN[leaf]}"
    return f"{layer}_1/{'kernel' if leaf == 'weight' else 'bias'}"


def write_graph(path: Path, hwio_tensors: dict[str, np.ndarray], *, input_side: int) -> Path:
    """A frozen GraphDef with the model's Consts (HWIO) and an NHWC Placeholder of ``input_side``."""
    nodes = placeholder_node("data_1", (-1, input_side, input_side, 3))
    for key, value in hwio_tensors.items():
        nodes += const_node(tf_name(key), tuple(value.shape), content=value)
    path.write_bytes(nodes)
    return path


def splat_graph(path: Path) -> Path:
    """A ~60-byte graph: one Const whose single float_val is splatted over ``HUGE`` (+ 2 axes)."""
    path.write_bytes(const_node("conv2d_0_1/kernel", (*HUGE, 1, 1), float_val=[1.0]))
    return path


# -- Keras HDF5 ----------------------------------------------------------------------------------


def keras_copy(keras_h5: Path, dest: Path) -> Path:
    """A copy of a generated Keras file (and its architecture JSON) in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / keras_h5.name
    shutil.copyfile(keras_h5, out)
    return out


def _replace_dataset(h5: Path, name: str, **create: object) -> None:
    import h5py

    with h5py.File(h5, "r+") as f:
        group = f["model_weights/conv2d_0"]
        shape, dtype = group[name].shape, group[name].dtype
        del group[name]
        create.setdefault("shape", shape)
        group.create_dataset(name, dtype=dtype, **create)


def keras_never_written(keras_h5: Path, dest: Path, *, huge: bool) -> Path:
    """``conv2d_0/kernel:0`` replaced by a chunked dataset that was never written (of ``HUGE`` shape or the right one)."""
    out = keras_copy(keras_h5, dest)
    shape = (*HUGE, 3, 3) if huge else None
    _replace_dataset(out, "conv2d_0/kernel:0", chunks=True, **({"shape": shape} if shape else {}))
    return out


def keras_external_storage(keras_h5: Path, dest: Path, secret: Path) -> Path:
    """``conv2d_0/kernel:0`` whose data HDF5 reads from ``secret``, another file."""
    import h5py

    out = keras_copy(keras_h5, dest)
    with h5py.File(out, "r") as f:
        nbytes = f["model_weights/conv2d_0/conv2d_0/kernel:0"].nbytes
    secret.write_bytes(np.full(nbytes // 4, 0.5, "<f4").tobytes())
    _replace_dataset(out, "conv2d_0/kernel:0", external=[(str(secret), 0, nbytes)])
    return out


def keras_external_link(keras_h5: Path, dest: Path) -> Path:
    """The layer group ``conv2d_0`` replaced by an external link into another HDF5 file."""
    import h5py

    out = keras_copy(keras_h5, dest)
    other = dest / "elsewhere.h5"
    shutil.copyfile(keras_h5, other)
    with h5py.File(out, "r+") as f:
        del f["model_weights/conv2d_0"]
        f["model_weights/conv2d_0"] = h5py.ExternalLink(str(other), "/model_weights/conv2d_0")
    return out


def keras_input_side(keras_h5: Path, dest: Path, side: int) -> Path:
    """The Keras file with its ``model_config`` declaring a ``side`` x ``side`` input."""
    import h5py

    out = keras_copy(keras_h5, dest)
    with h5py.File(out, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "InputLayer":
                layer["config"]["batch_input_shape"] = [None, side, side, 3]
        f.attrs["model_config"] = json.dumps(config).encode()
    return out


# -- TensorFlow Lite -----------------------------------------------------------------------------


def tflite_input_side(tflite: Path, dest: Path, side: int) -> Path:
    """The published ``.tflite`` with its input tensor's shape ``[1, 260, 260, 3]`` set to ``side``."""
    data = bytearray(tflite.read_bytes())
    old = np.array([1, 260, 260, 3], "<i4").tobytes()
    assert data.count(old) == 1, "the published input shape is no longer unique in the file"
    at = data.index(old)
    data[at: at + 16] = np.array([1, side, side, 3], "<i4").tobytes()
    out = dest / tflite.name
    out.write_bytes(bytes(data))
    return out


# -- native safetensors --------------------------------------------------------------------------


def native_with_metadata(native: Path, dest: Path, **metadata: str) -> Path:
    """The native file with ``metadata`` entries replaced (the tensors unchanged)."""
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(native), framework="numpy") as f:
        meta = dict(f.metadata() or {})
    meta.update(metadata)
    out = dest / native.name
    save_file(load_file(str(native)), str(out), metadata=meta)
    return out
