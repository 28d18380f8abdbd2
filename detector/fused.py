"""The fused CPU graph of :class:`~detector.model.AizooSSD`: oneDNN convolutions with their
ReLU fused and kernels packed once per input shape, paired heads, a faster max-pool."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from detector import onednn
from detector.errors import one_line
from detector.model import AizooSSD, flatten_head

logger = logging.getLogger(__name__)


def fused_cpu_available() -> bool:
    """Whether this torch build has the oneDNN ops :class:`FusedAizooSSD` needs."""
    return onednn.present()


@dataclass(frozen=True)
class _ConvParams:
    weight: torch.Tensor  # (O, I, 3, 3), dense
    bias: torch.Tensor  # (O,)
    padding: tuple[int, int]


@dataclass(frozen=True)
class _PackedConv:
    weight: torch.Tensor  # oneDNN-packed for one input shape
    bias: torch.Tensor
    padding: list[int]


@dataclass(frozen=True)
class _HeadPair:
    """A feature map's loc and cls heads as one: the two inner convolutions stacked
    (``[loc | cls]`` filters) and the two last ones block-diagonal over them, so that
    ``[:loc_channels]`` of the output is the loc head's and the rest the cls head's."""

    insert: _ConvParams
    out: _ConvParams
    loc_channels: int


def _pair_heads(loc: tuple[_ConvParams, _ConvParams], cls: tuple[_ConvParams, _ConvParams]) -> _HeadPair:
    (loc_in, loc_out), (cls_in, cls_out) = loc, cls
    if loc_in.padding != cls_in.padding or loc_out.padding != cls_out.padding:
        raise ValueError("a feature map's loc and cls heads must pad alike")
    a, b = loc_in.weight.shape[0], cls_in.weight.shape[0]
    lo, co = loc_out.weight.shape[0], cls_out.weight.shape[0]
    out = loc_out.weight.new_zeros((lo + co, a + b, *loc_out.weight.shape[2:]))
    out[:lo, :a] = loc_out.weight
    out[lo:, a:] = cls_out.weight
    return _HeadPair(
        _ConvParams(torch.cat([loc_in.weight, cls_in.weight]).contiguous(), torch.cat([loc_in.bias, cls_in.bias]), loc_in.padding),
        _ConvParams(out, torch.cat([loc_out.bias, cls_out.bias]), loc_out.padding),
        lo,
    )


_Conv = TypeVar("_Conv", _ConvParams, _PackedConv)


@dataclass(frozen=True)
class _Graph(Generic[_Conv]):
    """Every convolution of the graph; each head pair as ``(insert, out)``. Packed
    (:class:`_PackedConv`, one input shape) or dense (:class:`_ConvParams`, any shape)."""

    backbone: list[_Conv]
    heads: list[tuple[_Conv, _Conv]]


class FusedAizooSSD:
    """An inference-only CPU graph of :class:`AizooSSD`, built from its weights.

    Every convolution runs as one oneDNN primitive with its ReLU fused (the same op
    ``torch.compile`` emits for CPU convolutions), on channels-last tensors, with its
    kernel reordered once per input shape into oneDNN's blocked layout instead of on
    every call. Each feature map's loc and cls heads run as one pair of convolutions (the
    inner ones stacked, the last ones block-diagonal: the zero blocks add only ``+0.0``
    terms; 20 small calls become 10, ~6 % of a frame). Max-pooling is
    :func:`max_pool_2x2` (the same values, faster on even sides); the heads' flattening
    and the sigmoid are :class:`AizooSSD`'s own. Outputs equal ``model(x)`` to float
    rounding (~1e-6).

    The fused convolution and the packing are private torch functions (:mod:`detector.onednn`),
    used only on the torch versions tested. Elsewhere, or when packing or the first call of a
    packed shape raises anything at all, the graph runs public ``F.conv2d`` + ``F.relu``
    instead, from then on, with one logged warning (``private_ops`` says which it runs). The
    outputs are the same to float rounding: both are oneDNN convolutions of the same kernels.

    The weights are read once, at construction: later changes to ``model`` are not seen.
    Thread-safe: packing for a new shape takes a lock; calls share the packed kernels.
    """

    def __init__(self, model: AizooSSD) -> None:
        self.spec = model.spec

        def params(conv: nn.Conv2d) -> _ConvParams:
            pad = conv.padding
            if isinstance(pad, str) or conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
                raise ValueError(f"unsupported convolution {conv}")
            return _ConvParams(conv.weight.detach().float().contiguous(), conv.bias.detach().float().contiguous(), pad)

        self._backbone = [params(c) for c in model.backbone]
        self._heads = [
            _pair_heads((params(lh.insert), params(lh.out)), (params(ch.insert), params(ch.out)))
            for lh, ch in zip(model.loc_heads, model.cls_heads)
        ]
        self._dense: _Graph[_ConvParams] = _Graph(self._backbone, [(pair.insert, pair.out) for pair in self._heads])
        self._packed: dict[tuple[int, ...], _Graph[_PackedConv]] = {}
        self._ran: set[tuple[int, ...]] = set()  # packed shapes that have run once: their errors are real
        self._lock = threading.Lock()
        self.private_ops = True
        reason = onednn.why_unusable()
        if reason is not None:
            self._fall_back(reason)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, S, S) float32 in [0, 1] -> ``(loc (N, A, 4), scores (N, A, C))``, like ``AizooSSD``."""
        shape = tuple(x.shape)
        self._check_input(shape)
        x = x.contiguous(memory_format=torch.channels_last)
        if self.private_ops:
            # Any error of a private function while packing or on a shape's first call means
            # this torch's version of it differs from the one tested: run the public path.
            try:
                out = self._run(x, self._packed_for(shape), _private_conv)
            except Exception as exc:  # any error: a private function can change in any way
                if shape in self._ran:
                    raise
                self._fall_back(f"the private oneDNN convolution failed ({type(exc).__name__}: {one_line(exc)})")
            else:
                self._ran.add(shape)
                return out
        return self._run(x, self._dense, _public_conv)

    @property
    def packed_shapes(self) -> list[tuple[int, ...]]:
        """The input shapes kernels have been packed for so far."""
        return list(self._packed)

    def _fall_back(self, reason: str) -> None:
        with self._lock:
            if not self.private_ops:
                return
            self.private_ops = False
            self._packed.clear()
        logger.warning("%s; the fused CPU graph runs public torch convolutions instead", reason)

    def _run(self, x: torch.Tensor, graph: _Graph, conv: Callable[[torch.Tensor, _Conv, bool], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The graph on channels-last ``x``, each convolution by ``conv(x, params, relu)``."""
        n = len(graph.backbone)
        feats = []
        for i, params in enumerate(graph.backbone):
            x = conv(x, params, True)
            if i in self.spec.head_sources:
                feats.append(x)
            if i < n - 2:
                x = max_pool_2x2(x)
        locs, clss = [], []
        for (inner, last), pair, f in zip(graph.heads, self._heads, feats):
            y = conv(conv(f, inner, True), last, False)
            locs.append(flatten_head(y[:, : pair.loc_channels], 4))
            clss.append(flatten_head(y[:, pair.loc_channels :], self.spec.num_classes))
        return torch.cat(locs, 1), torch.sigmoid(torch.cat(clss, 1))

    def _check_input(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 4 or shape[1] != self._backbone[0].weight.shape[1]:
            raise ValueError(f"expected an (N, {self._backbone[0].weight.shape[1]}, H, W) input, got {shape}")

    def _packed_for(self, shape: tuple[int, ...]) -> _Graph[_PackedConv]:
        packed = self._packed.get(shape)
        if packed is None:
            with self._lock:
                packed = self._packed.get(shape)
                if packed is None:
                    packed = self._pack(shape)
                    self._packed[shape] = packed
        return packed

    def _pack(self, shape: tuple[int, ...]) -> _Graph[_PackedConv]:
        """Packs every kernel for input ``shape`` (N, 3, H, W), walking the layers' output shapes."""
        n, _, h, w = shape
        backbone, feat_shapes = [], []
        last = len(self._backbone)
        for i, p in enumerate(self._backbone):
            backbone.append(_pack(p, (n, p.weight.shape[1], h, w)))
            h, w = _conv_side(h, p.padding[0]), _conv_side(w, p.padding[1])
            if i in self.spec.head_sources:
                feat_shapes.append((n, p.weight.shape[0], h, w))
            if i < last - 2:
                h, w = -(-h // 2), -(-w // 2)

        heads = []
        for pair, fs in zip(self._heads, feat_shapes):
            a = pair.insert
            ah, aw = _conv_side(fs[2], a.padding[0]), _conv_side(fs[3], a.padding[1])
            heads.append((_pack(a, fs), _pack(pair.out, (n, a.weight.shape[0], ah, aw))))
        return _Graph(backbone, heads)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2, 2, ceil_mode=True)`` on (N, C, H, W), exactly; faster on
    channels-last maps with even sides.

    There the pairs of rows, then of columns, are two elementwise maxima over contiguous
    NHWC memory: 0.51 ms instead of 1.35 for the 260 model's first map (21 x 260 x 260 once
    pruned, one thread), whose channel count is no multiple of the SIMD width that torch's
    channels-last pooling kernel is written for. Other maps go to ``F.max_pool2d``.
    """
    n, c, h, w = x.shape
    if h % 2 or w % 2 or not x.is_contiguous(memory_format=torch.channels_last):
        return F.max_pool2d(x, 2, 2, ceil_mode=True)
    rows = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w * c)  # NHWC, two rows side by side
    rows = torch.maximum(rows[:, :, 0], rows[:, :, 1]).reshape(n, h // 2, w // 2, 2 * c)
    return torch.maximum(rows[..., :c], rows[..., c:]).permute(0, 3, 1, 2)


def _conv_side(side: int, pad: int) -> int:
    return side + 2 * pad - 2  # 3x3, stride 1


def _pack(p: _ConvParams, input_shape: tuple[int, ...]) -> _PackedConv:
    pad = list(p.padding)
    return _PackedConv(onednn.pack_conv_weight(p.weight, pad, input_shape), p.bias, pad)


def _private_conv(x: torch.Tensor, p: _PackedConv, relu: bool) -> torch.Tensor:
    return onednn.conv_pointwise(x, p.weight, p.bias, p.padding, relu=relu)


def _public_conv(x: torch.Tensor, p: _ConvParams, relu: bool) -> torch.Tensor:
    y = F.conv2d(x, p.weight, p.bias, padding=p.padding)
    return F.relu(y) if relu else y
