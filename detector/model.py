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
