"""Every weight format, loaded, equals the reference runtime (OpenCV DNN on the Caffe model)
on the detector parity test's inputs; the parity checks of ``maskjobs models verify`` work."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

from detector.predictor import FaceMaskDetector
from detector.weights import IMPORTERS, load_weights, read_weights
from detector.weights.verify import builtin_inputs, self_consistency
from tests.detector.test_parity import INPUTS, TOLERANCE
from tests.detector.weight_files import build_weight_files


@pytest.fixture(scope="module")
def weight_files(aizoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_weight_files(aizoo_dir, tmp_path_factory.getbasetemp() / "weight-files")


@pytest.fixture(scope="module")
def reference_outputs(reference) -> tuple[np.ndarray, np.ndarray]:
    outputs = [reference.raw(image) for _, image in INPUTS]
    return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])


@pytest.fixture(scope="module")
def outputs_by_weights() -> dict[bytes, tuple[np.ndarray, np.ndarray]]:
    """Port outputs keyed by the digest of the exact weights: formats that convert to
    bit-identical tensors (Caffe, MXNet, Paddle, native) have identical outputs, computed once."""
    return {}


def _port_outputs(
    detector: FaceMaskDetector, cache: dict[bytes, tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    digest = hashlib.sha256()
    for name, tensor in detector.model.state_dict().items():
        digest.update(name.encode() + tensor.float().contiguous().numpy().tobytes())
    key = digest.digest()
    if key not in cache:
        loc, scores = detector.raw(detector.prepare([image for _, image in INPUTS]))
        cache[key] = (loc.numpy(), scores.numpy())
    return cache[key]


@pytest.mark.slow  # OpenCV DNN parity over many inputs, for each format
@pytest.mark.parametrize("fmt", sorted(IMPORTERS))
def test_every_format_matches_the_reference(
    fmt: str, weight_files: dict[str, Path], reference_outputs, outputs_by_weights
) -> None:
    loc, scores = _port_outputs(FaceMaskDetector(weight_files[fmt]), outputs_by_weights)
    ref_loc, ref_scores = reference_outputs
    assert loc.shape == ref_loc.shape == (len(INPUTS), 5972, 4)
    assert scores.shape == ref_scores.shape == (len(INPUTS), 5972, 2)
    np.testing.assert_allclose(loc, ref_loc, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(scores, ref_scores, atol=TOLERANCE, rtol=0)


def test_builtin_inputs_are_deterministic_pictures() -> None:
    a, b = builtin_inputs(260), builtin_inputs(260)
    assert a.shape == (8, 260, 260, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a[0], a[5])  # two different noise pictures
    assert a[3].max() == 0 and a[4].min() == 255


@pytest.mark.slow  # float64 forward passes over many inputs
def test_self_consistency_checks_the_batchnorm_folding(aizoo_dir: Path) -> None:
    """The 360 model has no reference runtime: the float64 unfolded forward is its check."""
    raw = read_weights(aizoo_dir / "model360.pth")
    loaded = load_weights(aizoo_dir / "model360.pth")
    batch = builtin_inputs(360, count=2)
    report = self_consistency(loaded.model, raw, batch)
    assert loaded.spec.input_size == 360 and report.passed(), report
    wrong_eps = dataclasses.replace(raw, bn_eps=1e-1)
    assert not self_consistency(loaded.model, wrong_eps, batch[:1]).passed()
