"""Removing channels that are provably zero: a smaller :class:`AizooSSD` with equal outputs.

Folding BatchNorm into the published AIZOO weights leaves many filters whose weights are
zero or ~1e-35 (BatchNorm scales trained to nothing) and whose biases are negative: after
their ReLU they output exactly 0 for every input. In the 260 model 11 of the first layer's
32 filters, 45 of ``conv2d_4``'s 128 and half of most heads' inner filters are such; with
them and the weights that read them removed, a float32 forward pass takes 15-25 % less time
(``benchmarks/README.md``).

A filter is removed only when a bound proves it: with every input channel ``c`` in
``[0, U_c]`` (the model's input in ``[0, 1]``; a ReLU map in ``[0, its bound]``), the largest
pre-activation ``b + sum(max(w, 0) * U)`` plus the worst float rounding (float16 operands,
float32 sums) is below zero. Such a filter's computed output is 0.0 exactly, in float32 and
in float16, on every input in range, so the pruned model's outputs equal the full model's up
to the rounding of summing the same terms in another order (~1e-6; none at all in the fused
CPU graph, which only loses ``+0.0`` terms). Filters without a ReLU (the heads' last
convolutions) are never removed.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn

from detector.model import AizooSSD

logger = logging.getLogger(__name__)

SUM_ROUNDOFF = 2.0**-24  # sums run in float32: on CPU, and in cuDNN's float16 convolutions too
OPERAND_ROUNDOFF = 2.0**-11  # float16 operands (CUDA ``half``): weights and inputs rounded this much


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune_dead_channels` kept of each ReLU convolution, by module path:
    the indices of its filters that remain, and how many it had."""

    kept: dict[str, tuple[int, ...]]
    filters: dict[str, int]

    @property
    def removed(self) -> dict[str, int]:
        return {name: self.filters[name] - len(kept) for name, kept in self.kept.items()}

    @property
    def total_removed(self) -> int:
        return sum(self.removed.values())


def relu_conv_bounds(weight: torch.Tensor, bias: torch.Tensor, input_bounds: torch.Tensor) -> torch.Tensor:
    """Upper bounds of ``relu(conv(x))`` per output channel, for any ``x`` with channel ``c``
    in ``[0, input_bounds[c]]``, including float rounding: float32 arithmetic, or float16
    weights and inputs with float32 sums (cuDNN's half precision).

    Args:
        weight: (O, I, kh, kw). bias: (O,). input_bounds: (I,), non-negative.
    Returns:
        (O,) float64; 0 for a filter whose computed output is 0 for every such input.
    """
    w = weight.detach().double().cpu()
    b = bias.detach().double().cpu()
    u = input_bounds.double().cpu()[None, :, None, None]
    terms = w[0].numel() + 1
    gamma = terms * SUM_ROUNDOFF / (1 - terms * SUM_ROUNDOFF)  # worst relative error of an n-term sum
    grow = (1 + OPERAND_ROUNDOFF) ** 2  # a product of two rounded operands
    b_hi = b + b.abs() * OPERAND_ROUNDOFF
    largest = b_hi + grow * (w.clamp(min=0) * u).sum(dim=(1, 2, 3))
    rounding = gamma * (b.abs() * (1 + OPERAND_ROUNDOFF) + grow * (w.abs() * u).sum(dim=(1, 2, 3)))
    exact_zero = (w == 0).flatten(1).all(dim=1) & (b <= 0)  # 0 * x + b <= 0: no rounding at all
    return torch.where(exact_zero, torch.zeros_like(b), (largest + rounding).clamp(min=0))


def prune_dead_channels(model: AizooSSD) -> tuple[AizooSSD, PruneReport]:
    """A copy of ``model`` without its provably dead filters, and what was removed.

    Valid for inputs in ``[0, 1]`` (what :func:`detector.preprocess.to_tensor` makes). The
    copy has ``model``'s class and forward; only its convolutions are narrower. ``model`` is
    not changed.
    """
    convs = [*model.backbone, *(c for h in (*model.loc_heads, *model.cls_heads) for c in (h.insert, h.out))]
    if any(c.groups != 1 or c.bias is None for c in convs):
        raise ValueError("pruning needs ungrouped convolutions with biases")
    pruned = copy.deepcopy(model)
    kept: dict[str, tuple[int, ...]] = {}
    bounds = torch.ones(model.backbone[0].in_channels, dtype=torch.float64)  # per channel, 0 = dead
    feats = []  # the bounds of the maps the heads read
    for i, conv in enumerate(model.backbone):
        out = relu_conv_bounds(conv.weight, conv.bias, bounds)
        pruned.backbone[i] = _narrowed(conv, bounds > 0, out > 0)
        kept[f"backbone.{i}"] = _indices(out > 0)
        bounds = out  # max-pooling keeps a map's bound
        if i in model.spec.head_sources:
            feats.append(bounds)
    for kind, heads, new_heads in (("loc", model.loc_heads, pruned.loc_heads), ("cls", model.cls_heads, pruned.cls_heads)):
        for j, (head, feat) in enumerate(zip(heads, feats)):
            mid = relu_conv_bounds(head.insert.weight, head.insert.bias, feat)
            new_heads[j].insert = _narrowed(head.insert, feat > 0, mid > 0)
            new_heads[j].out = _narrowed(head.out, mid > 0, None)  # no ReLU: every output stays
            kept[f"{kind}_heads.{j}.insert"] = _indices(mid > 0)
    filters = {name: conv.out_channels for name, conv in model.named_modules() if name in kept}
    report = PruneReport(kept, filters)
    logger.debug("removed %d provably dead filters of %d", report.total_removed, sum(filters.values()))
    return pruned, report


def _narrowed(conv: nn.Conv2d, keep_in: torch.Tensor, keep_out: torch.Tensor | None) -> nn.Conv2d:
    """``conv`` reading only input channels ``keep_in`` and making only outputs ``keep_out`` (bool masks)."""
    weight = conv.weight.detach()[:, keep_in.to(conv.weight.device)]
    bias = conv.bias.detach()
    if keep_out is not None:
        keep_out = keep_out.to(conv.weight.device)
        weight, bias = weight[keep_out], bias[keep_out]
    new = nn.Conv2d(
        weight.shape[1], weight.shape[0], conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=True, device=weight.device, dtype=weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    return new.requires_grad_(conv.weight.requires_grad)


def _indices(alive: torch.Tensor) -> tuple[int, ...]:
    return tuple(alive.nonzero().flatten().tolist())
