"""The one place foreign checkpoints become this model's state dict.

Importers produce :class:`RawWeights`: tensors under AIZOO's own layer names (the names
every published file shares: ``conv2d_0``, ``cls_0_insert_conv2d``, ``loc_4_conv`` ...),
with an optional BatchNorm per convolution under ``<conv>_bn``, and conv kernels in
whatever layout their framework uses. :func:`to_state_dict` renames, converts kernel
layouts to OIHW and folds BatchNorm (numpy only: a Ray driver converts and ships weights
without importing torch), then :func:`build_model` loads them with ``strict=True``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector.errors import WeightsError
from detector.spec import ModelSpec

if TYPE_CHECKING:
    from detector.model import AizooSSD

logger = logging.getLogger(__name__)

# Kernel layouts: the axes' order of a 2-D conv kernel, converted to PyTorch's OIHW.
_LAYOUT_TO_OIHW = {
    "OIHW": (0, 1, 2, 3),  # PyTorch, Caffe, MXNet, Paddle
    "HWIO": (3, 2, 0, 1),  # TensorFlow, Keras
    "OHWI": (0, 3, 1, 2),  # TensorFlow Lite
}


@dataclass(frozen=True)
class RawWeights:
    """Tensors read from a weight file, before any conversion.

    Attributes:
        tensors: ``{"<layer>.weight" | "<layer>.bias" | "<layer>_bn.<weight|bias|running_mean|running_var>": array}``
        layout: the conv kernels' axis order, a key of ``_LAYOUT_TO_OIHW``.
        bn_eps: epsilon of the (unfolded) BatchNorm layers, if any.
        input_size: the input side the file declares, when it declares one.
    """

    path: Path
    format: str
    tensors: dict[str, np.ndarray]
    layout: str = "OIHW"
    bn_eps: float = 1e-3
    input_size: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def convert_layout(kernel: np.ndarray, layout: str) -> np.ndarray:
    """A 4-D conv kernel in ``layout`` -> OIHW."""
    if layout not in _LAYOUT_TO_OIHW:
        raise ValueError(f"unknown kernel layout {layout!r}")
    return np.ascontiguousarray(np.transpose(kernel, _LAYOUT_TO_OIHW[layout]))


def aizoo_layer_names(spec: ModelSpec) -> dict[str, str]:
    """AIZOO's conv layer name -> this model's module path."""
    names = {f"conv2d_{i}": f"backbone.{i}" for i in range(len(spec.backbone_channels))}
    for j in range(len(spec.head_sources)):
        for kind in ("cls", "loc"):
            names[f"{kind}_{j}_insert_conv2d"] = f"{kind}_heads.{j}.insert"
            names[f"{kind}_{j}_conv"] = f"{kind}_heads.{j}.out"
    return names


def _fold_bn(w: np.ndarray, b: np.ndarray, bn: dict[str, np.ndarray], eps: float) -> tuple[np.ndarray, np.ndarray]:
    w64, b64 = w.astype(np.float64), b.astype(np.float64)
    gamma = bn.get("weight", np.ones_like(bn["running_mean"])).astype(np.float64)
    beta = bn.get("bias", np.zeros_like(bn["running_mean"])).astype(np.float64)
    scale = gamma / np.sqrt(bn["running_var"].astype(np.float64) + eps)
    return (
        (w64 * scale[:, None, None, None]).astype(np.float32),
        ((b64 - bn["running_mean"]) * scale + beta).astype(np.float32),
    )


def to_state_dict(raw: RawWeights, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Renames, converts layouts to OIHW and folds BatchNorm: AIZOO tensors -> the model's
    state dict, as float32 numpy arrays (``{"<module>.weight": (O, I, 3, 3), "<module>.bias": (O,)}``)."""
    expected = spec.conv_shapes
    out: dict[str, np.ndarray] = {}
    for src, dst in aizoo_layer_names(spec).items():
        if f"{src}.weight" not in raw.tensors:
            raise WeightsError(raw.path, f"layer {src!r} is missing from the {raw.format} file")
        w = np.asarray(raw.tensors[f"{src}.weight"], dtype=np.float32)
        if w.ndim != 4:
            raise WeightsError(raw.path, f"layer {src!r} has a kernel of {w.ndim} dimensions, expected 4")
        w = convert_layout(w, raw.layout)
        b = raw.tensors.get(f"{src}.bias")
        b = np.zeros(w.shape[0], np.float32) if b is None else np.asarray(b, np.float32).reshape(-1)
        bn = {k.split(".", 1)[1]: np.asarray(v) for k, v in raw.tensors.items() if k.startswith(f"{src}_bn.")}
        if bn:
            if "running_mean" not in bn or "running_var" not in bn:
                raise WeightsError(raw.path, f"BatchNorm of layer {src!r} lacks its running statistics")
            try:
                w, b = _fold_bn(w, b, bn, raw.bn_eps)
            except ValueError as exc:
                raise WeightsError(raw.path, f"BatchNorm of layer {src!r} does not fit its kernel ({exc})") from None
        want_w = expected[dst]
        if w.shape != want_w or b.shape != (want_w[0],):
            raise WeightsError(
                raw.path,
                f"layer {src!r} has shape {tuple(w.shape)} (bias {tuple(b.shape)}), the model expects {want_w}",
            )
        out[f"{dst}.weight"] = np.ascontiguousarray(w, np.float32)
        out[f"{dst}.bias"] = np.ascontiguousarray(b, np.float32)
    return out


def from_state_dict(model: AizooSSD) -> dict[str, np.ndarray]:
    """The inverse of :func:`to_state_dict`: a model's tensors under AIZOO's names (OIHW, BN folded)."""
    names = {dst: src for src, dst in aizoo_layer_names(model.spec).items()}
    out = {}
    for key, tensor in model.state_dict().items():
        module, kind = key.rsplit(".", 1)
        out[f"{names[module]}.{kind}"] = tensor.detach().cpu().numpy().astype(np.float32)
    return out


def build_model(raw: RawWeights, spec: ModelSpec) -> AizooSSD:
    """A model in eval mode with ``raw``'s weights, loaded strictly."""
    return model_from_state(to_state_dict(raw, spec), spec)


def model_from_state(state: dict[str, np.ndarray], spec: ModelSpec) -> AizooSSD:
    """A model in eval mode from a :func:`to_state_dict` result, loaded strictly."""
    import torch

    from detector.model import AizooSSD

    model = AizooSSD(spec)
    model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()}, strict=True)
    return model.eval()
