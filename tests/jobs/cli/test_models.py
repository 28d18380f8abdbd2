"""``maskjobs models ...`` and ``maskjobs detect --weights`` over every weight format, through Typer's CliRunner."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from detector.preprocess import resize_rgb, to_tensor
from detector.weights import IMPORTERS, load_weights, save_native
from jobs.cli.main import app
from jobs.weight_cache import PINNED_COMMIT, PUBLISHED_SHA256
from tests.detector.test_parity import INPUTS, TOLERANCE
from tests.detector.weight_files import build_weight_files, copy_format

EXPECTED = {  # the reference runtime's detections on the shared photos (see tests/detector/test_parity.py)
    "aizoo_demo2.jpg": ("Mask", 0.9071, (222.5, 49.8, 327.5, 198.0)),
    "skimage_astronaut.png": ("NoMask", 0.8541, (182.1, 60.8, 278.7, 171.9)),
}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def weight_files(aizoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_weight_files(aizoo_dir, tmp_path_factory.getbasetemp() / "weight-files")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user cache, and no weights from the environment."""
    monkeypatch.setenv("MASKJOBS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MASKJOBS_WEIGHTS", raising=False)
    monkeypatch.delenv("MASKJOBS_WEIGHTS_URL", raising=False)
    return tmp_path / "cache" / "weights"


def _one_line_error(result, path: Path | str, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and result.stderr.count("\n") == 1
    assert str(path) in result.stderr
    return result.stderr


@pytest.mark.parametrize("fmt", sorted(IMPORTERS))
def test_detect_gives_the_same_detections_for_every_format(
    fmt: str, runner: CliRunner, weight_files: dict[str, Path], masked_photo: Path, unmasked_photo: Path
) -> None:
    args = ["detect", str(masked_photo), str(unmasked_photo), "--weights", str(weight_files[fmt]), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for frame in json.loads(result.stdout):
        label, score, box = EXPECTED[Path(frame["video"]).name]
        [det] = frame["detections"]
        assert det["label"] == label and det["score"] == pytest.approx(score, abs=1e-4)
        assert (det["x1"], det["y1"], det["x2"], det["y2"]) == pytest.approx(box, abs=0.1)


def test_import_writes_native_weights_that_info_describes(
    runner: CliRunner, weight_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "converted.safetensors"
    result = runner.invoke(app, ["models", "import", str(weight_files["pytorch"]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout and out.is_file()
    info = runner.invoke(app, ["models", "info", str(out)])
    assert info.exit_code == 0, info.output
    fields = dict(line.split(":", 1) for line in info.stdout.splitlines())
    fields = {k: v.strip() for k, v in fields.items()}
    assert fields["format"] == "native" and fields["input size"] == "260x260"
    assert fields["source format"] == "pytorch" and fields["source file"] == "face_mask_detection.pth"
    assert fields["source sha256"] == hashlib.sha256(weight_files["pytorch"].read_bytes()).hexdigest()
    assert fields["anchors"].startswith("5,972") and fields["classes"] == "Mask, NoMask"


def test_import_defaults_to_the_cache_which_detect_then_uses(
    runner: CliRunner, weight_files: dict[str, Path], cache: Path, masked_photo: Path
) -> None:
    assert runner.invoke(app, ["detect", str(masked_photo)]).exit_code == 2  # nothing cached yet
    result = runner.invoke(app, ["models", "import", str(weight_files["tensorflow"])])
    assert result.exit_code == 0, result.output
    assert (cache / "face_mask_detection.safetensors").is_file()
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]
    detect = runner.invoke(app, ["detect", str(masked_photo), "--json"])
    assert detect.exit_code == 0, detect.output
    assert json.loads(detect.stdout)[0]["detections"][0]["score"] == pytest.approx(0.9071, abs=1e-4)


def test_models_commands_take_weights_from_the_environment(
    runner: CliRunner, weight_files: dict[str, Path], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MASKJOBS_WEIGHTS", str(weight_files["mxnet"]))
    result = runner.invoke(app, ["models", "info"])
    assert result.exit_code == 0 and "mxnet" in result.stdout


def _diffs(stdout: str) -> tuple[float, float]:
    lines = dict(line.split(":", 1) for line in stdout.splitlines() if ":" in line)
    return float(lines["loc max abs diff"]), float(lines["scores max abs diff"])


def test_verify_finds_the_caffe_pair_beside_the_file(
    runner: CliRunner, weight_files: dict[str, Path], cache: Path
) -> None:
    result = runner.invoke(app, ["models", "verify", str(weight_files["tensorflow"])])
    assert result.exit_code == 0, result.output
    assert "OpenCV" in result.stdout and "face_mask_detection.caffemodel" in result.stdout
    assert "ok: within 0.0001" in result.stdout and max(_diffs(result.stdout)) <= TOLERANCE


@pytest.mark.slow  # float64 forward passes over many inputs
def test_verify_without_a_reference_checks_self_consistency(
    runner: CliRunner, aizoo_dir: Path, cache: Path, tmp_path: Path
) -> None:
    alone = tmp_path / "face_mask_detection.pth"  # no Caffe pair beside it, none in the cache
    shutil.copyfile(aizoo_dir / alone.name, alone)
    result = runner.invoke(app, ["models", "verify", str(alone)])
    assert result.exit_code == 0, result.output
    assert "self-consistency" in result.stdout and max(_diffs(result.stdout)) <= TOLERANCE


def test_verify_fails_with_exit_1_over_the_tolerance(
    runner: CliRunner, weight_files: dict[str, Path], aizoo_dir: Path, cache: Path, tmp_path: Path
) -> None:
    loaded = load_weights(weight_files["caffe"])
    with torch.no_grad():
        loaded.model.cls_heads[0].out.bias[1] += 1e-2
    bad = save_native(loaded, tmp_path / "perturbed.safetensors")
    result = runner.invoke(
        app, ["models", "verify", str(bad), "--reference", str(aizoo_dir / "face_mask_detection.caffemodel")]
    )
    assert "exceeds 0.0001" in _one_line_error(result, bad, code=1)
    assert max(_diffs(result.stdout)) > TOLERANCE


@pytest.mark.slow  # ONNX export, then parity over many inputs
def test_export_onnx_runs_in_onnxruntime_like_the_reference(
    runner: CliRunner, weight_files: dict[str, Path], reference, tmp_path: Path
) -> None:
    import onnxruntime as ort

    out = tmp_path / "aizoo.onnx"
    result = runner.invoke(app, ["models", "export", str(weight_files["keras"]), "--onnx", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith(str(out)) and result.stderr == ""
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    images = to_tensor(np.stack([resize_rgb(image, 260) for _, image in INPUTS])).numpy()
    loc, scores = session.run(["loc", "scores"], {"images": images})  # the whole batch at once: dynamic batch
    references = [reference.raw(image) for _, image in INPUTS]
    np.testing.assert_allclose(loc, np.concatenate([r[0] for r in references]), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(scores, np.concatenate([r[1] for r in references]), atol=TOLERANCE, rtol=0)
    single_loc, _ = session.run(["loc", "scores"], {"images": images[:1]})
    np.testing.assert_allclose(single_loc, loc[:1], atol=1e-5)


class _RunsACommand:
    def __reduce__(self) -> tuple:
        import os

        return (os.system, ("true",))


def _evil_pickle(path: Path) -> None:
    """A legacy checkpoint whose module pickle names os.system."""
    with open(path, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001}, _RunsACommand()):
            pickle.dump(obj, f, protocol=2)


def _keras_with_an_unconverted_kernel(path: Path) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        group = f["model_weights/cls_0_conv"]
        kernel = np.asarray(group["cls_0_conv/kernel:0"])
        del group["cls_0_conv/kernel:0"]
        group.create_dataset("cls_0_conv/kernel:0", data=np.transpose(kernel, (3, 2, 0, 1)))  # left OIHW


def _tf_kernel_of_the_wrong_shape(path: Path) -> None:
    """conv2d_0's kernel declares shape [3, 3, 3, 31] but holds 3x3x3x32 values."""
    shape = b"\x12\x02\x08\x03" * 3 + b"\x12\x02\x08\x20"
    data = path.read_bytes()
    assert data.count(shape) == 1
    path.write_bytes(data.replace(shape, shape[:-1] + b"\x1f"))


def _patch(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


BAD_FILES = {  # format, how to break a copy of its file, which file, what the error says
    "tflite-truncated": (
        "tflite",
        lambda p: p.write_bytes(p.read_bytes()[:2_000_000]),
        None,
        "not a valid TensorFlow Lite",
    ),
    "mxnet-bad-dtype": (
        "mxnet",
        lambda p: _patch(p, 76, (99).to_bytes(4, "little")),
        None,
        "unknown NDArray dtype flag 99",
    ),
    "paddle-params-of-another-model": (
        "paddle",
        lambda p: _patch(p, 22, b"\x10\x07"),  # the first tensor's dims (8,) -> (7,)
        "__params__",
        "stored with dims (7,), the program declares (8,)",
    ),
    "pickle-naming-an-unknown-class": (
        "pytorch",
        _evil_pickle,
        None,
        "refusing to load: the pickle names class 'posix.system'",
    ),
    "keras-wrong-tensor-shape": (
        "keras",
        _keras_with_an_unconverted_kernel,
        None,
        "layer 'cls_0_conv' has shape (8, 64, 3, 3) (HWIO), the model expects (3, 3, 64, 8)",
    ),
    "tensorflow-wrong-tensor-size": (
        "tensorflow",
        _tf_kernel_of_the_wrong_shape,
        None,
        "layer 'conv2d_0' has shape (3, 3, 3, 31) (HWIO), the model expects (3, 3, 3, 32)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_weight_files_are_one_line_and_exit_2(
    case: str, runner: CliRunner, weight_files: dict[str, Path], aizoo_dir: Path, tmp_path: Path, masked_photo: Path
) -> None:
    fmt, breaks, broken_name, message = BAD_FILES[case]
    main = copy_format(weight_files, fmt, aizoo_dir, tmp_path)
    broken = main.with_name(broken_name) if broken_name else main
    breaks(broken)
    for command in (["models", "info", str(main)], ["detect", str(masked_photo), "--weights", str(main)]):
        result = runner.invoke(app, command)
        assert message in _one_line_error(result, broken)


@dataclass
class Mirror:
    url: str
    models: Path
    requests: list[str]


@pytest.fixture
def mirror(tmp_path: Path, aizoo_dir: Path) -> Iterator[Mirror]:
    """AIZOO's repository layout served over HTTP on 127.0.0.1 from copies of the shared files."""
    root = tmp_path / "mirror"
    models = root / PINNED_COMMIT / "models"
    for name in PUBLISHED_SHA256:
        (models / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(aizoo_dir / name, models / name)
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
            requests.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=partial(server.serve_forever, poll_interval=0.05), daemon=True)
    thread.start()
    try:
        yield Mirror(f"http://127.0.0.1:{server.server_port}", models, requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.slow  # downloads every published file over HTTP
def test_fetch_downloads_verifies_and_caches(
    runner: CliRunner, mirror: Mirror, cache: Path, aizoo_dir: Path, masked_photo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = runner.invoke(app, ["models", "fetch", "caffe", "paddle", "--base-url", mirror.url])
    assert result.exit_code == 0, result.output
    names = ["face_mask_detection.prototxt", "face_mask_detection.caffemodel", "paddle/__model__", "paddle/__params__"]
    assert result.stdout.splitlines() == [str(cache / n) for n in names]
    assert mirror.requests == [f"/{PINNED_COMMIT}/models/{n}" for n in names]
    for name in names:
        assert (cache / name).read_bytes() == (aizoo_dir / name).read_bytes()
    # Cached files with the right digest are not downloaded again (the URL may come from the environment).
    monkeypatch.setenv("MASKJOBS_WEIGHTS_URL", mirror.url)
    assert runner.invoke(app, ["models", "fetch"]).exit_code == 0
    assert len(mirror.requests) == len(names)
    detect = runner.invoke(app, ["detect", str(masked_photo), "--json"])  # the cached Caffe model
    assert detect.exit_code == 0 and json.loads(detect.stdout)[0]["detections"][0]["label"] == "Mask"


def test_fetch_checksum_mismatch_leaves_nothing_in_the_cache(runner: CliRunner, mirror: Mirror, cache: Path) -> None:
    _patch(mirror.models / "face_mask_detection.caffemodel", 1000, b"x")
    result = runner.invoke(app, ["models", "fetch", "caffe", "--base-url", mirror.url])
    message = _one_line_error(result, "face_mask_detection.caffemodel")
    assert "checksum mismatch" in message and PUBLISHED_SHA256["face_mask_detection.caffemodel"] in message
    assert sorted(p.name for p in cache.iterdir()) == ["face_mask_detection.prototxt"]  # verified before it


def test_fetch_of_a_missing_file_is_one_line_and_exit_2(runner: CliRunner, mirror: Mirror, cache: Path) -> None:
    (mirror.models / "face_mask_detection.tflite").unlink()
    result = runner.invoke(app, ["models", "fetch", "tflite", "--base-url", mirror.url])
    assert "HTTP 404" in _one_line_error(result, "face_mask_detection.tflite")
    assert not cache.exists() or not any(cache.iterdir())
