"""Keras 2.x HDF5 importer (``.hdf5`` / ``.h5``, with the architecture ``.json`` beside it).

A whole-model save keeps the weights under ``model_weights/`` (a ``save_weights`` file at
the root): one group per layer whose ``weight_names`` attribute lists datasets such as
``conv2d_0/kernel:0`` or ``conv2d_0_bn/moving_variance:0``. The architecture is the
``model_config`` attribute or the Keras JSON beside the file; it gives the input side and
the BatchNorm epsilon. AIZOO's Keras model: NHWC, kernels HWIO, convolutions without
bias followed by separate BatchNorm layers (heads' output convolutions have a bias).

Read with h5py: datasets only, nothing is deserialized or executed. Only what lies in the
file itself is read: external links, soft links, external storage and virtual datasets
(which make HDF5 open other files) are refused, and so is a dataset that was never written
(HDF5 would make one up from its fill value); each dataset's shape is checked against the
model (:func:`detector.weights.limits.admit`) and its chunks bounded before it is read.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from detector.errors import WeightsError, one_line
from detector.weights._keras_names import aizoo_key
from detector.weights.convert import RawWeights
from detector.weights.limits import admit, check_file_size, read_bounded

logger = logging.getLogger(__name__)

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_WEIGHT_SUFFIXES = (".hdf5", ".h5")
_KERAS_DEFAULT_BN_EPS = 1e-3
_MAX_CHUNK_BYTES = 64 << 20


def weights_path(path: Path) -> Path:
    """The HDF5 weights for a path naming either the weights or the architecture JSON."""
    if path.suffix != ".json":
        return path
    for suffix in _WEIGHT_SUFFIXES:
        if path.with_suffix(suffix).is_file():
            return path.with_suffix(suffix)
    return path.with_suffix(_WEIGHT_SUFFIXES[0])


def sniff(head: bytes, path: Path) -> bool:
    if head.startswith(_HDF5_SIGNATURE):
        return True
    text = head.lstrip()
    return path.suffix == ".json" and text.startswith(b"{") and b'"class_name"' in text and b'"config"' in text


def _decode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def architecture(config: dict[str, Any]) -> tuple[int | None, float]:
    """``(input side, BatchNorm epsilon)`` declared by a Keras model config."""
    side, eps = None, set()
    for layer in config.get("config", {}).get("layers", []):
        cfg = layer.get("config", {})
        if layer.get("class_name") == "InputLayer":
            shape = cfg.get("batch_input_shape") or []
            if len(shape) == 4 and shape[1] == shape[2] and isinstance(shape[1], int):
                side = shape[1]
        elif layer.get("class_name") == "BatchNormalization":
            eps.add(float(cfg.get("epsilon", _KERAS_DEFAULT_BN_EPS)))
    if len(eps) > 1:
        raise ValueError(f"BatchNorm layers use different epsilons {sorted(eps)}")
    return side, eps.pop() if eps else _KERAS_DEFAULT_BN_EPS


def _read_config(f: Any, path: Path) -> dict[str, Any]:
    if "model_config" in f.attrs:
        return json.loads(_decode(f.attrs["model_config"]))
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        return json.loads(read_bounded(sidecar).decode("utf-8"))
    logger.info("%s: no architecture found; assuming Keras defaults", path)
    return {}


def _member(h5py: Any, group: Any, name: str, path: Path) -> Any:
    """``group[name]``, following only hard links inside this file (``name`` may hold ``/``)."""
    node = group
    for part in (p for p in name.split("/") if p):
        link = node.get(part, getlink=True)
        if link is None:
            raise WeightsError(path, f"{name!r} is missing from the Keras file")
        if not isinstance(link, h5py.HardLink):
            kind = "an external link to another file" if isinstance(link, h5py.ExternalLink) else "a soft link"
            raise WeightsError(path, f"{name!r} is {kind}; only data stored in the file itself is read")
        node = node[part]
    return node


def _check_dataset(dataset: Any, path: Path) -> None:
    """Refuses a dataset whose data HDF5 would read from another file, make up, or inflate unboundedly."""
    name = dataset.name
    if dataset.is_virtual:
        raise WeightsError(path, f"dataset {name!r} is virtual (its data lives in other files)")
    if dataset.external:
        raise WeightsError(path, f"dataset {name!r} keeps its data in external files")
    if dataset.dtype.kind != "f":
        raise WeightsError(path, f"dataset {name!r} holds {dataset.dtype}, not floating-point values")
    if dataset.size and dataset.id.get_storage_size() == 0:
        raise WeightsError(path, f"dataset {name!r} was never written (it holds no data)")
    if dataset.chunks is not None and math.prod(dataset.chunks) * dataset.dtype.itemsize > _MAX_CHUNK_BYTES:
        raise WeightsError(path, f"dataset {name!r} has chunks of {dataset.chunks}")


def read(path: Path) -> RawWeights:
    import h5py  # only this importer needs it

    h5_path = weights_path(path)
    if not h5_path.is_file():
        raise WeightsError(h5_path, "the Keras weights (.hdf5) beside the architecture JSON are missing")
    check_file_size(h5_path)
    tensors: dict[str, np.ndarray] = {}
    try:
        with h5py.File(h5_path, "r") as f:
            side, eps = architecture(_read_config(f, h5_path))
            group = _member(h5py, f, "model_weights", h5_path) if "model_weights" in f else f
            layer_names = [_decode(n) for n in group.attrs.get("layer_names", list(group.keys()))]
            for layer in layer_names:
                layer_group = _member(h5py, group, layer, h5_path)
                for weight_name in (_decode(n) for n in layer_group.attrs.get("weight_names", [])):
                    key = aizoo_key(weight_name)
                    if key is None:
                        continue
                    dataset = _member(h5py, layer_group, weight_name, h5_path)
                    if not isinstance(dataset, h5py.Dataset):
                        raise WeightsError(h5_path, f"{weight_name!r} is not a dataset")
                    if admit(h5_path, key, dataset.shape or (), layout="HWIO"):
                        _check_dataset(dataset, h5_path)
                        tensors[key] = np.asarray(dataset[()], dtype=np.float32)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError) as exc:  # h5py: corruption
        raise WeightsError(h5_path, f"not a readable Keras HDF5 file ({one_line(exc, limit=160)})") from None
    if not tensors:
        raise WeightsError(h5_path, "the Keras file holds no AIZOO layer weights")
    return RawWeights(path=h5_path, format="keras", tensors=tensors, layout="HWIO", bn_eps=eps, input_size=side)
