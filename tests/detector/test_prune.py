"""Pruning provably dead filters: the bounds hold, nothing live is removed, outputs are equal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detector.fused import fused_cpu_available
from detector.model import AizooSSD
from detector.predictor import FaceMaskDetector
from detector.preprocess import resize_rgb, to_tensor
from detector.prune import prune_dead_channels, relu_conv_bounds
from detector.spec import ModelSpec
from detector.weights import load_weights
from tests.detector.test_parity import INPUTS

PUBLISHED = ["face_mask_detection.caffemodel", "face_mask_detection.pth", "model360.pth"]


def _convs(model: AizooSSD) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _inputs(size: int) -> torch.Tensor:
    """The parity inputs resized to the model, plus the extremes of the input range."""
    frames = [resize_rgb(image, size) for _, image in INPUTS]
    frames += [np.zeros((size, size, 3), np.uint8), np.full((size, size, 3), 255, np.uint8)]
    return to_tensor(np.stack(frames)).contiguous()


@pytest.fixture(scope="module", params=PUBLISHED)
def published(request: pytest.FixtureRequest, aizoo_dir: Path) -> AizooSSD:
    return load_weights(aizoo_dir / request.param).model.eval()


@pytest.mark.slow  # full and pruned models over many inputs
def test_the_pruned_model_equals_the_full_one(published: AizooSSD) -> None:
    before = {k: v.clone() for k, v in published.state_dict().items()}
    pruned, report = prune_dead_channels(published)
    x = _inputs(published.spec.input_size)
    with torch.inference_mode():
        full_loc, full_scores = published(x)
        loc, scores = pruned(x)
    assert report.total_removed > 0
    assert sum(c.weight.numel() for c in _convs(pruned).values()) < sum(c.weight.numel() for c in _convs(published).values())
    torch.testing.assert_close(loc, full_loc, rtol=0, atol=1e-5)
    torch.testing.assert_close(scores, full_scores, rtol=0, atol=1e-6)
    for key, value in published.state_dict().items():  # the model itself is untouched
        assert torch.equal(value, before[key]), key


@pytest.mark.slow  # runs the full models over many inputs
def test_every_removed_filter_outputs_zero_in_the_full_model(published: AizooSSD) -> None:
    pruned, report = prune_dead_channels(published)
    full, narrow = _convs(published), _convs(pruned)
    peaks: dict[str, torch.Tensor] = {}
    hooks = [
        conv.register_forward_hook(lambda _m, _i, out, name=name: peaks.__setitem__(name, F.relu(out).amax(dim=(0, 2, 3))))
        for name, conv in full.items()
    ]
    try:
        with torch.inference_mode():
            published(_inputs(published.spec.input_size))
    finally:
        for hook in hooks:
            hook.remove()
    for name, kept in report.kept.items():
        assert len(kept) == narrow[name].out_channels
        assert report.filters[name] == full[name].out_channels
        removed = sorted(set(range(full[name].out_channels)) - set(kept))
        assert (peaks[name][removed] == 0).all(), f"{name}: a removed filter was non-zero on some input"
        torch.testing.assert_close(narrow[name].bias, full[name].bias[list(kept)], rtol=0, atol=0)


def test_heads_keep_every_output(published: AizooSSD) -> None:
    pruned, _ = prune_dead_channels(published)
    for head, new in zip((*published.loc_heads, *published.cls_heads), (*pruned.loc_heads, *pruned.cls_heads)):
        assert new.out.out_channels == head.out.out_channels
        assert new.out.in_channels == new.insert.out_channels


def _conv(weight: list[list[float]], bias: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, I, 1, 1) weights from nested lists, and biases."""
    return torch.tensor(weight, dtype=torch.float32)[:, :, None, None], torch.tensor(bias, dtype=torch.float32)


def test_bounds_of_hand_made_filters() -> None:
    w, b = _conv(
        [[0.0, 0.0], [1e-35, 2e-35], [0.0, 0.0], [0.0, 0.0], [1.0, -1.0], [0.5, 0.5], [0.0, 0.25], [0.0, 0.25]],
        [-0.1, -0.1, 0.0, 0.3, 0.0, -2.0, -1.0, -1.01],
    )
    bounds = relu_conv_bounds(w, b, torch.tensor([1.0, 4.0]))
    assert bounds[0] == 0  # zero weights, negative bias: always 0
    assert bounds[1] == 0  # subnormal-scale weights cannot overcome the bias
    assert bounds[2] == 0  # 0 * x + 0 is exactly 0
    assert bounds[3] == pytest.approx(0.3, rel=1e-2)  # a constant filter is live
    assert bounds[4] == pytest.approx(1.0, rel=1e-2)
    assert bounds[5] == pytest.approx(0.5, rel=1e-2)  # float16 rounding of 2.5 - 2 widens it a little
    assert 0 < bounds[6] < 1e-2  # 0.25 * 4 - 1 = 0 at the top of the range: rounding could make it positive
    assert bounds[7] == 0  # 0.25 * 4 - 1.01 < 0 by more than float16 operands could move it


def test_bounds_hold_on_random_inputs() -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 16, 3, 3, generator=gen) * 0.2
    weight[::2] *= 1e-3  # half the filters too weak to overcome their bias
    bias = torch.randn(64, generator=gen) - 1.5
    upper = torch.rand(16, generator=gen) * 3
    bounds = relu_conv_bounds(weight, bias, upper)
    x = torch.rand(32, 16, 20, 20, generator=gen) * upper[None, :, None, None]
    x[:4] = upper[None, :, None, None]  # the top of the range
    peaks = F.relu(F.conv2d(x, weight, bias, padding=1)).amax(dim=(0, 2, 3)).double()
    assert (peaks <= bounds).all()
    assert ((bounds == 0) <= (peaks == 0)).all()
    assert 0 < int((bounds == 0).sum()) < 64  # the case exercises both kinds of filter


def _tiny_model() -> AizooSSD:
    spec = ModelSpec(name="tiny", input_size=160, backbone_channels=(8, 8, 8, 8, 8, 8, 8, 8), head_channels=8)
    torch.manual_seed(0)
    model = AizooSSD(spec).eval()
    with torch.no_grad():
        first = model.backbone[0]
        first.weight[0].zero_()
        first.bias[0] = -1.0  # dead
        first.weight[1].zero_()
        first.bias[1] = 0.5  # constant 0.5 inside the picture, 0 in the next layer's padding: live
    return model


def test_a_constant_filter_is_kept_and_a_dead_one_removed() -> None:
    model = _tiny_model()
    pruned, report = prune_dead_channels(model)
    assert report.kept["backbone.0"] == tuple(range(1, 8))
    assert pruned.backbone[1].in_channels == 7
    x = torch.rand(3, 3, 160, 160)
    with torch.inference_mode():
        torch.testing.assert_close(pruned(x), model(x), rtol=0, atol=1e-5)


def test_grouped_convolutions_are_refused() -> None:
    model = _tiny_model()
    model.backbone[2] = nn.Conv2d(8, 8, 3, padding=1, groups=2)
    with pytest.raises(ValueError, match="ungrouped"):
        prune_dead_channels(model)


@pytest.mark.slow  # builds and runs full and pruned detectors
@pytest.mark.parametrize("backend", ["eager", pytest.param("fused", marks=pytest.mark.skipif(not fused_cpu_available(), reason="torch built without oneDNN"))])
def test_the_detector_runs_the_pruned_copy(pth_weights: Path, backend: str) -> None:
    pruned = FaceMaskDetector(pth_weights, backend=backend)
    full = FaceMaskDetector(pth_weights, backend=backend, prune=False)
    assert pruned.pruned is not None and pruned.pruned.total_removed > 0
    assert full.pruned is None and full.runner is full.model
    assert pruned.runner.backbone[0].out_channels < pruned.model.backbone[0].out_channels
    images = [image for _, image in INPUTS]
    frames = pruned.prepare(images)
    for a, b in zip(pruned.raw(frames), full.raw(frames)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    sizes = [(im.shape[1], im.shape[0]) for im in images]
    for a, b in zip(pruned.detect_prepared(frames, sizes), full.detect_prepared(frames, sizes)):
        assert a.class_names == b.class_names and a.labels.tolist() == b.labels.tolist()
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
