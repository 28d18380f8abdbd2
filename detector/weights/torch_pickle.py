"""Read the tensors of a PyTorch checkpoint without executing anything from it.

AIZOO published ``face_mask_detection.pth`` as a PyTorch 0.4-era *legacy* pickle of a
whole MMdnn-generated module (``MainModel.KitModel``), with the class's source code
embedded. ``torch.load(weights_only=True)`` refuses such a file and
turning ``weights_only`` off would import and run code named in it. This module reads it with
a restricted unpickler that resolves only an allow-list of names, each mapped to an
inert stand-in (no user class is ever imported), then reads the raw storages that
follow the pickle. The result is a flat ``{dotted.name: np.ndarray}`` state dict.

Modern zip checkpoints (``torch.save(state_dict)``: ``<name>/data.pkl`` plus one
``<name>/data/<key>`` record per storage) are read the same way, without torch: its
``torch.load(weights_only=True)`` is not safe before torch 2.6, and even then it builds
whatever shapes the file declares.

Every tensor is checked before its data is touched: its name and shape against the model
(:func:`detector.weights.limits.admit`; tensors the model does not use are skipped
unread), and every element's reach against its storage (offset and strides non-negative,
a zero stride only on an axis of size 1, the farthest element inside the storage), so no
view reads outside its storage and no small file expands into a large array.
"""

from __future__ import annotations

import collections
import io
import logging
import pickle
import pickletools
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.errors import WeightsError
from detector.weights.limits import MAX_FILE_BYTES, admit, element_count

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

    def check_layout(self, path: Path, name: str) -> None:
        """Refuses a layout that reaches outside its storage or repeats elements (see the module doc)."""
        if len(self.size) != len(self.stride):
            raise WeightsError(path, f"tensor {name!r} has {len(self.size)} sizes but {len(self.stride)} strides")
        count = element_count(path, self.size)
        if self.offset < 0:
            raise WeightsError(path, f"tensor {name!r} starts at the negative storage offset {self.offset}")
        for size, stride in zip(self.size, self.stride):
            if size > 1 and stride <= 0:
                raise WeightsError(path, f"tensor {name!r} has stride {stride} on an axis of size {size}")
        if count == 0:
            return
        last = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride))
        if last >= self.storage.size:
            raise WeightsError(
                path, f"tensor {name!r} of shape {self.size} reaches element {last} of a {self.storage.size}-element storage"
            )

    def materialize(self, path: Path, name: str) -> np.ndarray:
        """A copy of the tensor's elements, its layout checked first (:meth:`check_layout`)."""
        self.check_layout(path, name)
        data = self.storage.data
        if data is None:
            raise WeightsError(path, f"tensor {name!r} refers to a storage the file does not contain")
        if data.size != self.storage.size:
            raise WeightsError(path, f"tensor {name!r}: its storage holds {data.size} elements, not {self.storage.size}")
        if element_count(path, self.size) == 0:
            return np.zeros(self.size, dtype=data.dtype)
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(st * itemsize if s > 1 else 0 for s, st in zip(self.size, self.stride)),  # size-1: unused
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored):  # noqa: ANN001, ANN202
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    return _LazyTensor(storage, int(storage_offset), tuple(int(d) for d in size), tuple(int(d) for d in stride))


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
            if size < 0:
                raise WeightsError(self._path, f"a storage of {size} elements")
            if key in self.storages and self.storages[key].dtype is not storage_type.dtype:
                raise WeightsError(self._path, f"storage {key!r} is named with two element types")
            if key not in self.storages:
                self.storages[key] = _Storage(storage_type.dtype, size)
            return self.storages[key]
        raise WeightsError(self._path, f"unexpected persistent id {str(kind)[:40]!r} in the pickle")


_MAX_MEMO = 1 << 20  # memo slots a checkpoint's pickle may name (AIZOO's uses a few hundred)
_MEMO_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})


def _load(unpickler: pickle.Unpickler, f: io.BytesIO, path: Path) -> Any:
    """``unpickler.load()`` after a dry read of the opcodes up to STOP: the C unpickler grows its
    memo to the largest index a PUT names (4 bytes: up to 32 GiB, zeroed), so such an index is
    refused first."""
    start = f.tell()
    for op, arg, _pos in pickletools.genops(f):
        if op.name in _MEMO_OPS and int(arg) > _MAX_MEMO:
            raise WeightsError(path, f"the pickle names memo slot {int(arg)}")
    f.seek(start)
    return unpickler.load()


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
        magic = _load(_DataOnlyUnpickler(f), f, path)
        if magic != _LEGACY_MAGIC:
            raise WeightsError(path, "not a PyTorch checkpoint (bad magic number)")
        _load(_DataOnlyUnpickler(f), f, path)  # protocol version
        _load(_DataOnlyUnpickler(f), f, path)  # sys info
        unpickler = _RestrictedUnpickler(f, path)
        root = _load(unpickler, f, path)
        keys = _load(_DataOnlyUnpickler(f), f, path)
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RecursionError, OverflowError) as exc:
        raise WeightsError(path, f"not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"[:300]) from None
    if not isinstance(keys, list):
        raise WeightsError(path, "not a readable PyTorch checkpoint (no list of storages after the pickle)")
    for key in keys:
        storage = unpickler.storages.get(str(key))
        if storage is None:
            raise WeightsError(path, f"storage {str(key)[:40]!r} listed but never used")
        header = f.read(8)
        if len(header) != 8:
            raise WeightsError(path, "file is truncated (storage data missing)")
        (count,) = struct.unpack("<q", header)
        nbytes = count * np.dtype(storage.dtype).itemsize
        if count != storage.size or nbytes > len(raw) - f.tell():
            raise WeightsError(path, "file is truncated or corrupt (storage size mismatch)")
        storage.data = np.frombuffer(f.read(nbytes), dtype=storage.dtype)
    return _tensors(path, root)


def _tensors(path: Path, root: Any) -> dict[str, np.ndarray]:
    """The model's tensors among those the pickle holds: each checked, then copied out."""
    lazy: dict[str, _LazyTensor] = {}
    _flatten(root, "", lazy)
    if not lazy:
        raise WeightsError(path, "the checkpoint holds no tensors")
    wanted = {name: t for name, t in lazy.items() if admit(path, name, t.size, layout="OIHW")}
    for name, t in wanted.items():
        t.check_layout(path, name)
    return {name: t.materialize(path, name) for name, t in wanted.items()}


_ZIP_BYTEORDER = {"little": "<", "big": ">"}


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    """A ``torch.save`` zip checkpoint, read with the same restricted unpickler (no torch)."""
    try:
        with zipfile.ZipFile(path) as zf:
            pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise WeightsError(path, "not a PyTorch zip checkpoint (no single <name>/data.pkl in it)")
            prefix = pickles[0][: -len("data.pkl")]
            order = "little"
            if f"{prefix}byteorder" in zf.namelist():
                order = zf.read(f"{prefix}byteorder")[:16].decode("ascii", "replace").strip()
            if order not in _ZIP_BYTEORDER:
                raise WeightsError(path, f"unknown byte order {order[:16]!r}")
            info = zf.getinfo(pickles[0])
            if info.file_size > MAX_FILE_BYTES:
                raise WeightsError(path, f"the checkpoint's pickle is {info.file_size} bytes")
            stream = io.BytesIO(_read_member(zf, info, info.file_size))
            unpickler = _RestrictedUnpickler(stream, path)
            root = _load(unpickler, stream, path)
            lazy: dict[str, _LazyTensor] = {}
            _flatten(root, "", lazy)
            wanted = {name: t for name, t in lazy.items() if admit(path, name, t.size, layout="OIHW")}
            total = 0
            for name, t in wanted.items():
                t.check_layout(path, name)
                storage = t.storage
                if storage.data is not None:
                    continue
                key = next(k for k, v in unpickler.storages.items() if v is storage)
                dtype = np.dtype(storage.dtype).newbyteorder(_ZIP_BYTEORDER[order])
                nbytes = storage.size * dtype.itemsize
                total += nbytes
                if total > MAX_FILE_BYTES:
                    raise WeightsError(path, f"the model's tensors refer to more than {MAX_FILE_BYTES >> 20} MiB of storage")
                try:
                    member = zf.getinfo(f"{prefix}data/{key}")
                except KeyError:
                    raise WeightsError(path, f"tensor {name!r} refers to storage {key!r}, which the file lacks") from None
                if member.file_size != nbytes:
                    raise WeightsError(path, f"storage {key!r} holds {member.file_size} bytes, its tensors need {nbytes}")
                storage.data = np.frombuffer(_read_member(zf, member, nbytes), dtype=dtype).astype(storage.dtype)
    except WeightsError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError, pickle.UnpicklingError,
            ValueError, TypeError, AttributeError, IndexError, KeyError, RecursionError, OverflowError) as exc:
        raise WeightsError(path, f"not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"[:300]) from None
    if not lazy:
        raise WeightsError(path, "the checkpoint holds no tensors")
    return {name: t.materialize(path, name) for name, t in wanted.items()}


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, nbytes: int) -> bytes:
    """Exactly ``nbytes`` of a zip member, never more (a compressed member may inflate past its header)."""
    with zf.open(info) as member:
        data = member.read(nbytes + 1)
    if len(data) != nbytes:
        raise WeightsError(zf.filename or "?", f"zip member {info.filename!r} holds {len(data)} bytes, not {nbytes}")
    return data


def read_torch_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """The model's tensors in a ``.pth`` file by dotted name, executing nothing from it
    (tensors the model does not use are skipped unread)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    from detector.weights.limits import read_bounded

    return _read_legacy(path, read_bounded(path))
