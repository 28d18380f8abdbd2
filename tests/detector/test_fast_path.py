"""The CPU fast path equals the plain module, and the detector keeps to its thread budget."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.fused import FusedAizooSSD, fused_cpu_available
from detector.model import flush_denormals_
from detector.predictor import FaceMaskDetector
from detector.weights import load_weights
from tests.conftest import MEDIA, read_rgb

needs_fused = pytest.mark.skipif(not fused_cpu_available(), reason="torch built without oneDNN")


def _frames(detector: FaceMaskDetector, n: int = 5) -> np.ndarray:
    photos = [read_rgb(MEDIA / "aizoo_demo2.jpg"), read_rgb(MEDIA / "skimage_astronaut.png")]
    rng = np.random.default_rng(3)
    images = [*photos, photos[0][::2, ::-1], rng.integers(0, 256, size=(300, 200, 3), dtype=np.uint8)]
    images += [rng.integers(0, 256, size=(260, 260, 3), dtype=np.uint8) for _ in range(n - len(images))]
    return detector.prepare(images[:n])


class _Spy(FaceMaskDetector):
    """Records, for every model call, the thread it ran on, its intra-op threads and its batch."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, int, int]] = []
        self._active = 0
        self.max_active = 0
        self._spy_lock = threading.Lock()
        self._model_call = self.engine.forward
        self.engine.forward = self._forward  # the engine's one model call, seen from here

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._spy_lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        try:
            self.calls.append((threading.current_thread().name, torch.get_num_threads(), x.shape[0]))
            return self._model_call(x)
        finally:
            with self._spy_lock:
                self._active -= 1


@pytest.fixture(scope="module")
def eager(caffe_weights: Path) -> FaceMaskDetector:
    return FaceMaskDetector(caffe_weights, backend="eager")


@pytest.mark.slow  # builds and runs the fused graph for three models
@needs_fused
@pytest.mark.parametrize("weights", ["face_mask_detection.caffemodel", "face_mask_detection.pth", "model360.pth"])
def test_fused_graph_equals_the_module(aizoo_dir: Path, weights: str) -> None:
    model = load_weights(aizoo_dir / weights).model.eval()
    fused = FusedAizooSSD(model)
    rtol = 1e-5 if weights == "model360.pth" else 0.0  # its box offsets reach ~10: float32 rounding
    size = model.spec.input_size
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(x)
        for batch in (x, x[:1], x.contiguous(memory_format=torch.channels_last)):
            for got, exp in zip(fused(batch), expected):
                torch.testing.assert_close(got, exp[: len(batch)], atol=1e-5, rtol=rtol)
    assert sorted(fused.packed_shapes) == [(1, 3, size, size), (3, 3, size, size)]


@needs_fused
def test_default_detector_is_fused_and_equals_eager(caffe_weights: Path, eager: FaceMaskDetector) -> None:
    fast = FaceMaskDetector(caffe_weights)
    assert fast.backend == "fused" and eager.backend == "eager"
    frames = _frames(fast)
    for got, expected in zip(fast.raw(frames), eager.raw(frames)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    sizes = [(640, 480)] * len(frames)
    for a, b in zip(fast.detect_prepared(frames, sizes), eager.detect_prepared(frames, sizes)):
        assert len(a) == len(b) and (a.labels == b.labels).all()
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)


def test_subnormal_weights_are_zeroed_without_changing_outputs(caffe_weights: Path) -> None:
    model = load_weights(caffe_weights).model.eval()
    tiny = torch.finfo(torch.float32).tiny
    assert any(((p.abs() < tiny) & (p != 0)).any() for p in model.parameters())  # the published file has some
    x = torch.rand(2, 3, 260, 260, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = model(x)
        assert flush_denormals_(model) == 27
        after = model(x)
    assert not any(((p.abs() < tiny) & (p != 0)).any() for p in model.parameters())
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert flush_denormals_(model) == 0


@pytest.mark.slow  # runs several detectors over a batch
@pytest.mark.parametrize("backend", ["auto", "eager"])
def test_micro_batches_and_worker_threads_give_the_same_outputs(caffe_weights: Path, eager: FaceMaskDetector, backend: str) -> None:
    frames = _frames(eager, 5)
    expected = eager.raw(frames)
    for num_threads, micro_batch in [(None, 2), (1, 1), (2, 1), (2, 4), (3, 2)]:
        det = FaceMaskDetector(caffe_weights, backend=backend, num_threads=num_threads, micro_batch=micro_batch)
        for got, exp in zip(det.raw(frames), expected):
            torch.testing.assert_close(got, exp, atol=1e-5, rtol=0)
        det.close()


def test_num_threads_splits_a_batch_over_single_threaded_workers(caffe_weights: Path) -> None:
    before = torch.get_num_threads()
    det = _Spy(caffe_weights, num_threads=2, micro_batch=1)
    det.raw(_frames(det, 5))
    assert sorted(b for _, _, b in det.calls) == [1, 1, 1, 1, 1]
    names = {name for name, _, _ in det.calls}
    assert 1 <= len(names) <= 2 and all(name.startswith("maskjobs-detector") for name in names)
    assert {threads for _, threads, _ in det.calls} == {1}  # one intra-op thread per worker
    assert det.max_active <= 2
    assert torch.get_num_threads() == before  # the caller's setting is untouched
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [before]  # and so is the default a new thread starts from
    det.close()


@pytest.mark.parametrize("num_threads,batch", [(1, 3), (3, 1)])
def test_num_threads_on_the_calling_thread_is_restored(caffe_weights: Path, num_threads: int, batch: int) -> None:
    before = torch.get_num_threads()
    det = _Spy(caffe_weights, num_threads=num_threads, micro_batch=8)
    frames = _frames(det, batch)
    det.raw(frames)  # one micro-batch: runs here, with num_threads intra-op threads
    assert det.calls == [(threading.current_thread().name, num_threads, batch)]
    assert torch.get_num_threads() == before
    det.detect_prepared(frames, [(260, 260)] * batch)  # post-processing runs on one thread
    assert torch.get_num_threads() == before


def test_num_threads_none_leaves_torch_alone(caffe_weights: Path) -> None:
    before = torch.get_num_threads()
    det = _Spy(caffe_weights, micro_batch=2)
    det.raw(_frames(det, 5))
    assert [(n, t) for n, t, _ in det.calls] == [(threading.current_thread().name, before)] * 3
    assert [b for _, _, b in det.calls] == [2, 2, 1]
    assert torch.get_num_threads() == before


def test_empty_batch(caffe_weights: Path) -> None:
    det = FaceMaskDetector(caffe_weights, num_threads=2)
    loc, scores = det.raw(np.zeros((0, 260, 260, 3), np.uint8))
    assert loc.shape == (0, 5972, 4) and scores.shape == (0, 5972, 2)


def test_detector_pickles_without_its_threads(caffe_weights: Path) -> None:
    det = FaceMaskDetector(caffe_weights, num_threads=2, micro_batch=1)
    frames = _frames(det, 3)
    expected = det.raw(frames)
    copy = pickle.loads(pickle.dumps(det))
    for got, exp in zip(copy.raw(frames), expected):
        torch.testing.assert_close(got, exp, atol=0, rtol=0)
    det.close()
    copy.close()


@pytest.mark.parametrize(
    "kwargs",
    [{"backend": "tensorrt"}, {"num_threads": 0}, {"micro_batch": 0}],
)
def test_bad_settings_are_refused(caffe_weights: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FaceMaskDetector(caffe_weights, **kwargs)


@pytest.mark.parametrize("shape", [(1, 21, 260, 260), (3, 58, 130, 130), (2, 63, 65, 65), (1, 5, 6, 9), (2, 16, 4, 4)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_max_pool_2x2_equals_torch_ceil_mode(shape: tuple[int, ...], channels_last: bool) -> None:
    from detector.fused import max_pool_2x2

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    x[..., 0, 0] = float("-inf")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = max_pool_2x2(x)
    want = torch.nn.functional.max_pool2d(x, 2, 2, ceil_mode=True)
    assert got.shape == want.shape and torch.equal(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last or shape[2] % 2 == 1
