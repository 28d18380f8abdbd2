"""The fused graph's private torch functions are pinned: on an untested torch, or when one of
them raises, the graph runs public convolutions with the same outputs and says so once."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from detector import onednn
from detector.fused import FusedAizooSSD
from detector.model import AizooSSD
from detector.predictor import FaceMaskDetector
from detector.weights import load_weights

needs_private = pytest.mark.skipif(onednn.why_unusable() is not None, reason="the private oneDNN path is not used here")


@pytest.fixture(scope="module")
def model(caffe_weights: Path) -> AizooSSD:
    return load_weights(caffe_weights).model.eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(2, 3, 260, 260, generator=torch.Generator().manual_seed(5))


def _outputs(graph: FusedAizooSSD, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        return graph(x)


def _fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "detector.fused" and r.levelno == logging.WARNING]


def _assert_same(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]) -> None:
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "version,tested",
    [("2.13.0+cpu", True), ("2.13.1", True), ("2.13.0a0+git1234", True), ("2.14.0", False), ("2.1.3", False),
     ("3.13.0", False), ("nightly", False)],
)
def test_only_tested_releases_count(version: str, tested: bool) -> None:
    assert onednn.TESTED_TORCH_VERSIONS == ("2.13",)
    assert onednn.version_tested(version) is tested


def test_an_untested_torch_runs_the_public_path(
    model: AizooSSD, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with torch.inference_mode():
        want = model(x)
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    with caplog.at_level(logging.WARNING, logger="detector.fused"):
        graph = FusedAizooSSD(model)
        got = _outputs(graph, x)
        _outputs(graph, x[:1])
    assert not graph.private_ops and graph.packed_shapes == []  # nothing private was called
    _assert_same(got, want)
    (warning,) = _fallback_warnings(caplog)
    assert "torch 2.99.0 is not a tested version (2.13.x)" in warning and "public torch convolutions" in warning


@needs_private
def test_the_public_path_equals_the_private_one(model: AizooSSD, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    private = FusedAizooSSD(model)
    want = _outputs(private, x)
    assert private.private_ops
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    _assert_same(_outputs(FusedAizooSSD(model), x), want)


@needs_private
@pytest.mark.parametrize(
    "owner,name",
    [(torch.ops.mkldnn, "_convolution_pointwise"), (torch._C._nn, "mkldnn_reorder_conv2d_weight")],
    ids=["run", "pack"],
)
def test_a_private_function_that_raises_falls_back_once(
    model: AizooSSD, x: torch.Tensor, owner: object, name: str,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    want = _outputs(FusedAizooSSD(model), x)
    calls = []

    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(name)
        raise RuntimeError(f"{name}() got an unexpected keyword argument\nsecond line")

    monkeypatch.setattr(owner, name, broken)
    graph = FusedAizooSSD(model)
    assert graph.private_ops  # a tested version with the names: tried first
    with caplog.at_level(logging.WARNING, logger="detector.fused"):
        got = _outputs(graph, x)
        again = _outputs(graph, x[:1])
    assert not graph.private_ops and len(calls) == 1  # never tried again
    _assert_same(got, want)
    _assert_same(again, tuple(t[:1] for t in want))
    (warning,) = _fallback_warnings(caplog)
    assert f"RuntimeError: {name}() got an unexpected keyword argument" in warning and "second line" not in warning


@needs_private
def test_an_error_after_a_shape_has_run_is_not_hidden(model: AizooSSD, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = FusedAizooSSD(model)
    _outputs(graph, x)

    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        _outputs(graph, x)
    assert graph.private_ops


def test_a_bad_input_is_refused_on_either_path(model: AizooSSD, monkeypatch: pytest.MonkeyPatch) -> None:
    for version in (torch.__version__, "2.99.0"):
        monkeypatch.setattr(torch, "__version__", version)
        with pytest.raises(ValueError, match=r"expected an \(N, 3, H, W\) input"):
            _outputs(FusedAizooSSD(model), torch.rand(1, 4, 260, 260))


@needs_private
def test_the_fused_detector_falls_back_with_the_same_detections(caffe_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 260, 260, 3), dtype=np.uint8)
    eager = FaceMaskDetector(caffe_weights, backend="eager")
    want = eager.raw(frames)

    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("changed signature")

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", broken)
    fused = FaceMaskDetector(caffe_weights, num_threads=2)
    assert fused.backend == "fused"
    _assert_same(fused.raw(frames), want)  # micro-batches on two worker threads: one falls back
    fused.close()
