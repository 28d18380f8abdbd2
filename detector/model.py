"""The AIZOO face-mask SSD in plain PyTorch.

Layer graph, as the published Caffe prototxt and Keras JSON define it::

    data (N,3,S,S) RGB in [0,1]
    conv2d_0..5: 3x3 pad 1 + ReLU, each followed by MaxPool 2x2/2 (ceil mode)
    conv2d_6:    3x3 pad 1 + ReLU
    conv2d_7:    3x3 pad 0 + ReLU
    heads on conv2d_3..7: {cls,loc}_i_insert_conv2d 3x3 pad 1 (64) + ReLU
                          -> {cls,loc}_i_conv 3x3 pad 1 (A*2 | A*4)
    each head: permute NCHW -> NHWC, reshape (N, -1, 2|4); sigmoid on the class head

BatchNorm is folded into the convolutions when weights are loaded
(:mod:`detector.weights.convert`), so the module holds only convolutions.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detector.spec import ModelSpec


class _Head(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.insert = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.out = nn.Conv2d(mid_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.insert(x)))


def flatten_head(x: torch.Tensor, last_dim: int, *, permute: bool = True) -> torch.Tensor:
    """(N, A*last_dim, H, W) -> (N, H*W*A, last_dim), anchors ordered row, column, anchor.

    The permute to NHWC is what makes a channels-first port agree with the
    channels-last original; ``permute=False`` exists to show that it does not.
    """
    if permute:
        x = x.permute(0, 2, 3, 1)
    return x.reshape(x.shape[0], -1, last_dim)


class AizooSSD(nn.Module):
    """Returns ``(loc, scores)``: box offsets (N, A, 4) and sigmoid scores (N, A, C)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        chans = spec.backbone_channels
        n = len(chans)
        self.backbone = nn.ModuleList(
            nn.Conv2d(cin, cout, 3, padding=0 if i == n - 1 else 1)
            for i, (cin, cout) in enumerate(zip((3, *chans[:-1]), chans))
        )
        a = spec.anchors_per_cell
        src = [chans[i] for i in spec.head_sources]
        self.cls_heads = nn.ModuleList(_Head(c, spec.head_channels, a * spec.num_classes) for c in src)
        self.loc_heads = nn.ModuleList(_Head(c, spec.head_channels, a * 4) for c in src)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone maps the heads read, largest first."""
        n = len(self.backbone)
        feats = []
        for i, conv in enumerate(self.backbone):
            x = F.relu(conv(x))
            if i in self.spec.head_sources:
                feats.append(x)
            if i < n - 2:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
        return feats

    def head_maps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Raw NCHW head outputs ``(loc_maps, cls_maps)`` before flattening."""
        feats = self.features(x)
        return [h(f) for h, f in zip(self.loc_heads, feats)], [h(f) for h, f in zip(self.cls_heads, feats)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc_maps, cls_maps = self.head_maps(x)
        loc = torch.cat([flatten_head(m, 4) for m in loc_maps], dim=1)
        cls = torch.cat([flatten_head(m, self.spec.num_classes) for m in cls_maps], dim=1)
        return loc, torch.sigmoid(cls)


def flush_denormals_(model: nn.Module) -> int:
    """Zeroes the model's subnormal float weights in place; returns how many there were.

    BatchNorm folding leaves the published 260 model one dead first-layer filter whose
    27 weights are ~4e-40 (its bias is negative, so ReLU zeroes it either way). x86 runs
    arithmetic on subnormals in microcode: that one filter made the first convolution
    about 50x slower. Zeroing them changes every output by less than 1e-38.
    """
    count = 0
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                tiny = p.abs() < torch.finfo(p.dtype).tiny
                tiny &= p != 0
                n = int(tiny.sum())
                if n:
                    p.masked_fill_(tiny, 0.0)
                    count += n
    return count


def fused_cpu_available() -> bool:
    """Whether this torch build has the oneDNN ops :class:`FusedAizooSSD` needs."""
    if not torch.backends.mkldnn.is_available():
        return False
    return hasattr(torch.ops.mkldnn, "_convolution_pointwise") and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")


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


@dataclass(frozen=True)
class _PackedGraph:
    """Every kernel packed for one input shape; each head pair as ``(insert, out)``."""

    backbone: list[_PackedConv]
    heads: list[tuple[_PackedConv, _PackedConv]]


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

    The weights are read once, at construction: later changes to ``model`` are not seen.
    Thread-safe: packing for a new shape takes a lock; calls share the packed kernels.
    """

    def __init__(self, model: AizooSSD) -> None:
        if not fused_cpu_available():
            raise RuntimeError("this torch build has no oneDNN fused convolution")
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
        self._packed: dict[tuple[int, ...], _PackedGraph] = {}
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, S, S) float32 in [0, 1] -> ``(loc (N, A, 4), scores (N, A, C))``, like ``AizooSSD``."""
        graph = self._packed_for(tuple(x.shape))
        x = x.contiguous(memory_format=torch.channels_last)
        n = len(graph.backbone)
        feats = []
        for i, conv in enumerate(graph.backbone):
            x = _conv(x, conv, relu=True)
            if i in self.spec.head_sources:
                feats.append(x)
            if i < n - 2:
                x = max_pool_2x2(x)
        locs, clss = [], []
        for (inner, last), pair, f in zip(graph.heads, self._heads, feats):
            y = _conv(_conv(f, inner, relu=True), last, relu=False)
            locs.append(flatten_head(y[:, : pair.loc_channels], 4))
            clss.append(flatten_head(y[:, pair.loc_channels :], self.spec.num_classes))
        return torch.cat(locs, 1), torch.sigmoid(torch.cat(clss, 1))

    @property
    def packed_shapes(self) -> list[tuple[int, ...]]:
        """The input shapes kernels have been packed for so far."""
        return list(self._packed)

    def _packed_for(self, shape: tuple[int, ...]) -> _PackedGraph:
        packed = self._packed.get(shape)
        if packed is None:
            with self._lock:
                packed = self._packed.get(shape)
                if packed is None:
                    packed = self._pack(shape)
                    self._packed[shape] = packed
        return packed

    def _pack(self, shape: tuple[int, ...]) -> _PackedGraph:
        """Packs every kernel for input ``shape`` (N, 3, H, W), walking the layers' output shapes."""
        if len(shape) != 4 or shape[1] != self._backbone[0].weight.shape[1]:
            raise ValueError(f"expected an (N, {self._backbone[0].weight.shape[1]}, H, W) input, got {shape}")
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
        return _PackedGraph(backbone, heads)


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
    w = torch._C._nn.mkldnn_reorder_conv2d_weight(p.weight.to_mkldnn(), pad, [1, 1], [1, 1], 1, list(input_shape))
    return _PackedConv(w, p.bias, pad)


def _conv(x: torch.Tensor, p: _PackedConv, *, relu: bool) -> torch.Tensor:
    return torch.ops.mkldnn._convolution_pointwise(
        x, p.weight, p.bias, p.padding, [1, 1], [1, 1], 1, "relu" if relu else "none", [], ""
    )
