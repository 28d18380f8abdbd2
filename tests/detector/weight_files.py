"""One weight file per importer, for the registry-driven tests.

The published files are used in place (read-only shared folder). Two formats have no
published file there: the Keras ``.hdf5`` (AIZOO's is not in the shared copy), written
here in Keras 2.x HDF5 layout from the published ``.pth`` (kernels transposed OIHW ->
HWIO by hand, BatchNorm kept separate), and the native ``.safetensors``, imported from
the published Caffe model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from detector.weights import load_weights, read_weights, save_native

# format -> its files in the AIZOO folder; the first is the one a user points --weights at.
PUBLISHED: dict[str, tuple[str, ...]] = {
    "caffe": ("face_mask_detection.caffemodel", "face_mask_detection.prototxt"),
    "pytorch": ("face_mask_detection.pth",),
    "tensorflow": ("face_mask_detection.pb",),
    "tflite": ("face_mask_detection.tflite",),
    "mxnet": ("face_mask_detection.params",),
    "paddle": ("paddle/__model__", "paddle/__params__"),
}
GENERATED = ("keras", "native")

_KERAS_BN_VARS = (
    ("gamma", "weight"),
    ("beta", "bias"),
    ("moving_mean", "running_mean"),
    ("moving_variance", "running_var"),
)


def write_keras_hdf5(pth: Path, architecture_json: Path, out: Path) -> Path:
    """A Keras 2.2.4 whole-model HDF5 (``model_weights/<layer>/<layer>/<var>:0``) from a ``.pth``."""
    import h5py

    tensors = read_weights(pth).tensors
    config = json.loads(architecture_json.read_text())
    with h5py.File(out, "w") as f:
        f.attrs["keras_version"] = b"2.2.4"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(config).encode()
        weights_group = f.create_group("model_weights")
        layers = config["config"]["layers"]
        weights_group.attrs["layer_names"] = np.array([layer["name"].encode() for layer in layers])
        for layer in layers:
            name = layer["name"]
            variables: list[tuple[str, np.ndarray]] = []
            if layer["class_name"] == "Conv2D":
                variables.append(("kernel", np.transpose(tensors[f"{name}.weight"], (2, 3, 1, 0))))
                if layer["config"]["use_bias"]:
                    variables.append(("bias", tensors[f"{name}.bias"]))
            elif layer["class_name"] == "BatchNormalization":
                variables += [(var, tensors[f"{name}.{key}"]) for var, key in _KERAS_BN_VARS]
            group = weights_group.create_group(name)
            group.attrs["weight_names"] = np.array([f"{name}/{var}:0".encode() for var, _ in variables], dtype="S")
            for var, value in variables:
                group.create_dataset(f"{name}/{var}:0", data=np.ascontiguousarray(value, dtype=np.float32))
    return out


def build_weight_files(aizoo_dir: Path, out_dir: Path) -> dict[str, Path]:
    """``{format: file}`` for every importer; generated files are written once into ``out_dir``."""
    files = {fmt: aizoo_dir / names[0] for fmt, names in PUBLISHED.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    keras_h5 = out_dir / "face_mask_detection.hdf5"
    if not keras_h5.exists():
        shutil.copyfile(aizoo_dir / "face_mask_detection.json", out_dir / "face_mask_detection.json")
        write_keras_hdf5(aizoo_dir / "face_mask_detection.pth", aizoo_dir / "face_mask_detection.json", keras_h5)
    files["keras"] = keras_h5
    native = out_dir / "face_mask_detection.safetensors"
    if not native.exists():
        save_native(load_weights(files["caffe"]), native)
    files["native"] = native
    return files


def copy_format(files: dict[str, Path], fmt: str, aizoo_dir: Path, dest: Path) -> Path:
    """Copies ``fmt``'s file(s) into ``dest`` (keeping the layout) and returns the main copy."""
    names = PUBLISHED.get(fmt) or (files[fmt].name,)
    source_dir = aizoo_dir if fmt in PUBLISHED else files[fmt].parent
    for name in names:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source_dir / name, dest / name)
    return dest / names[0]
