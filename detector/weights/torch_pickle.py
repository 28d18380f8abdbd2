"""Read the tensors of a PyTorch checkpoint without executing anything from it.

AIZOO published ``face_mask_detection.pth`` as a PyTorch 0.4-era *legacy* pickle of a
whole MMdnn-generated module (``MainModel.KitModel``), with the class's source code
embedded. ``torch.load(weights_only=True)`` refuses such a file and
turning ``weights_only`` off would import and run code named in it. This module reads it with
a restricted unpickler that resolves only an allow-list of names, each mapped to an
inert stand-in (no user class is ever imported), then reads the raw storages that
follow the pickle. The result is a flat ``{dotted.name: np.ndarray}`` state dict.

Modern zip checkpoints (``torch.save(state_dict)``) go through
``torch.load(weights_only=True)``, which is already safe.
"""

from __future__ import annotations

import collections
import io
import logging
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.errors import WeightsError, one_line

logger = logging.getLogger(__name__)

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# Module classes a published checkpoint may name. Each becomes an inert stand-in.
_MODULE_CLASSES = frozenset(
    {
        "MainModel.KitModel",
        "torch.nn.modules.conv.Conv2d",
        "torch.nn.modules.batchnorm.BatchNorm2d",
        "torch.nn.modules.linear.Linear",
        "torch.nn.modules.activation.ReLU",
        "torch.nn.modules.pooling.MaxPool2d",
        "torch.nn.modules.container.Sequential",
        "torch.nn.modules.container.ModuleList",
    }
)

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _ModuleStub:
    """Inert stand-in for a pickled ``nn.Module``: it only keeps the pickled state."""

    qualname = ""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


@dataclass(frozen=True)
class _StorageType:
    dtype: type


@dataclass
class _Storage:
    dtype: type
    size: int
    data: np.ndarray | None = None


@dataclass
class _LazyTensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self, path: Path) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightsError(path, "a tensor refers to a storage the file does not contain")
        itemsize = data.dtype.itemsize
        needed = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride)) + 1
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, dtype=data.dtype)
        if needed > data.size:
            raise WeightsError(path, f"a tensor of shape {self.size} overruns its storage")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(st * itemsize for st in self.stride),
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored):  # noqa: ANN001, ANN202
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):  # noqa: ANN001, ANN202
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals; everything else is refused."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file)
        self._path = path
        self.storages: dict[str, _Storage] = {}
        self._stubs: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full == "collections.OrderedDict":
            return collections.OrderedDict
        if full == "torch._utils._rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if full == "torch._utils._rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if full in _MODULE_CLASSES:
            if full not in self._stubs:
                self._stubs[full] = type(name, (_ModuleStub,), {"qualname": full})
            return self._stubs[full]
        raise WeightsError(self._path, f"refusing to load: the pickle names class {full!r}")

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise WeightsError(self._path, "unexpected persistent id in the pickle")
        kind = pid[0]
        if kind == "module":
            cls = pid[1]
            if not (isinstance(cls, type) and issubclass(cls, _ModuleStub)):
                raise WeightsError(self._path, "the pickle names a module class that is not allowed")
            return cls
        if kind == "storage" and len(pid) >= 5:
            storage_type, key, size = pid[1], str(pid[2]), int(pid[4])  # pid[3]: the device, unused
            if not isinstance(storage_type, _StorageType):
                raise WeightsError(self._path, "a storage of an unknown type")
            if key not in self.storages:
                self.storages[key] = _Storage(storage_type.dtype, size)
            return self.storages[key]
        raise WeightsError(self._path, f"unexpected persistent id {str(kind)[:40]!r} in the pickle")


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} not allowed here")


def _flatten(obj: Any, prefix: str, out: dict[str, _LazyTensor]) -> None:
    """Walks stubs' ``_parameters``, ``_buffers`` and ``_modules`` into dotted names."""
    if isinstance(obj, _ModuleStub):
        state = obj.__dict__
        for group in ("_parameters", "_buffers"):
            for name, value in (state.get(group) or {}).items():
                if isinstance(value, _LazyTensor):
                    out[f"{prefix}{name}"] = value
        for name, child in (state.get("_modules") or {}).items():
            _flatten(child, f"{prefix}{name}.", out)
    elif isinstance(obj, dict):
        for name, value in obj.items():
            if isinstance(value, _LazyTensor):
                out[f"{prefix}{name}"] = value
            elif isinstance(value, (dict, _ModuleStub)):
                _flatten(value, f"{prefix}{name}.", out)


def _read_legacy(path: Path, raw: bytes) -> dict[str, np.ndarray]:
    f = io.BytesIO(raw)
    try:
        magic = _DataOnlyUnpickler(f).load()
        if magic != _LEGACY_MAGIC:
            raise WeightsError(path, "not a PyTorch checkpoint (bad magic number)")
        _DataOnlyUnpickler(f).load()  # protocol version
        _DataOnlyUnpickler(f).load()  # sys info
        unpickler = _RestrictedUnpickler(f, path)
        root = unpickler.load()
        keys = _DataOnlyUnpickler(f).load()
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise WeightsError(path, f"not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    for key in keys:
        storage = unpickler.storages.get(str(key))
        if storage is None:
            raise WeightsError(path, f"storage {key!r} listed but never used")
        header = f.read(8)
        if len(header) != 8:
            raise WeightsError(path, "file is truncated (storage data missing)")
        (count,) = struct.unpack("<q", header)
        nbytes = count * np.dtype(storage.dtype).itemsize
        buf = f.read(nbytes)
        if count != storage.size or len(buf) != nbytes:
            raise WeightsError(path, "file is truncated or corrupt (storage size mismatch)")
        storage.data = np.frombuffer(buf, dtype=storage.dtype)
    lazy: dict[str, _LazyTensor] = {}
    _flatten(root, "", lazy)
    if not lazy:
        raise WeightsError(path, "the checkpoint holds no tensors")
    return {name: t.materialize(path) for name, t in lazy.items()}


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad zip; report one line
        raise WeightsError(path, f"not a loadable PyTorch checkpoint: {one_line(exc)}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(path, "the checkpoint is not a state dict")
    return {str(k): v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}


def read_torch_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """Returns every tensor of a ``.pth`` file by dotted name, executing nothing from it."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    return _read_legacy(path, path.read_bytes())
