"""The private torch surfaces the fused CPU graph uses, pinned to the torch versions tested.

:class:`~detector.fused.FusedAizooSSD` runs each convolution as one oneDNN primitive with its
ReLU fused, its kernel reordered once per input shape. Torch exposes that only through
private functions (the ones ``torch.compile`` emits for CPU convolutions):

- ``torch._C._nn.mkldnn_reorder_conv2d_weight``: a dense kernel -> oneDNN's blocked layout
  for one input shape;
- ``torch.ops.mkldnn._convolution_pointwise``: the convolution with a fused post-op.

Private functions change between releases without notice (arguments, or what they return),
so they are used only on the torch versions in :data:`TESTED_TORCH_VERSIONS`; this module is
the only place that names them. The caller falls back to public torch on any other version
and on any error they raise (see :class:`~detector.fused.FusedAizooSSD`).
"""

from __future__ import annotations

import re

import torch

# major.minor releases whose private oneDNN functions were checked against the public path
# (tests/detector/test_fast_path.py: bit-equal outputs, and the benchmarks' speed-up)
TESTED_TORCH_VERSIONS: tuple[str, ...] = ("2.13",)

_RELEASE = re.compile(r"(\d+)\.(\d+)")


def version_tested(version: str | None = None) -> bool:
    """Whether ``version`` (default: this torch's, e.g. ``"2.13.0+cpu"``) is a tested release."""
    found = _RELEASE.match(str(torch.__version__ if version is None else version))
    return found is not None and f"{found[1]}.{found[2]}" in TESTED_TORCH_VERSIONS


def present() -> bool:
    """Whether this torch build has oneDNN and the private functions by name."""
    if not torch.backends.mkldnn.is_available():
        return False
    return hasattr(torch.ops.mkldnn, "_convolution_pointwise") and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")


def why_unusable(version: str | None = None) -> str | None:
    """``None`` where the private functions may be used; else why not, in a few words."""
    if not present():
        return "this torch build lacks oneDNN's private fused convolution"
    if not version_tested(version):
        tested = ", ".join(f"{v}.x" for v in TESTED_TORCH_VERSIONS)
        return f"torch {torch.__version__ if version is None else version} is not a tested version ({tested})"
    return None


def pack_conv_weight(weight: torch.Tensor, padding: list[int], input_shape: tuple[int, ...]) -> torch.Tensor:
    """A dense (O, I, 3, 3) float32 kernel (stride 1, no dilation, one group) reordered into
    oneDNN's blocked layout for input ``input_shape`` (N, I, H, W)."""
    return torch._C._nn.mkldnn_reorder_conv2d_weight(weight.to_mkldnn(), padding, [1, 1], [1, 1], 1, list(input_shape))


def conv_pointwise(
    x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor, padding: list[int], *, relu: bool
) -> torch.Tensor:
    """``relu(conv2d(x, w, bias))`` (or without the ReLU) with a kernel from :func:`pack_conv_weight`;
    ``x`` (N, I, H, W) float32 channels-last."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, packed_weight, bias, padding, [1, 1], [1, 1], 1, "relu" if relu else "none", [], ""
    )
