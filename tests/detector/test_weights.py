"""Weight files: the published ones load; bad ones fail with one line naming the file."""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
from pathlib import Path

import pytest
import torch

from detector.errors import WeightsError
from detector.weights import IMPORTERS, detect_format, load_weights, read_weights
from tests.detector.weight_files import GENERATED, PUBLISHED, build_weight_files, copy_format


@pytest.fixture(scope="session")
def weight_files(aizoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_weight_files(aizoo_dir, tmp_path_factory.getbasetemp() / "weight-files")


def test_every_importer_has_a_test_file() -> None:
    assert sorted(IMPORTERS) == sorted([*PUBLISHED, *GENERATED])


@pytest.mark.parametrize("fmt", sorted(IMPORTERS))
def test_every_importer_loads_its_published_file(fmt: str, weight_files: dict[str, Path]) -> None:
    path = weight_files[fmt]
    assert detect_format(path).name == fmt
    loaded = load_weights(path)
    assert loaded.format == fmt and loaded.spec.input_size == 260
    assert sum(p.numel() for p in loaded.model.parameters()) > 1_000_000


@pytest.mark.parametrize("fmt", sorted(IMPORTERS))
def test_format_is_detected_from_content_under_any_name(
    fmt: str, weight_files: dict[str, Path], aizoo_dir: Path, tmp_path: Path
) -> None:
    main = copy_format(weight_files, fmt, aizoo_dir, tmp_path)
    disguised = main.with_name("weights.bin") if fmt != "paddle" else main  # paddle pairs by file name
    main.rename(disguised)
    assert detect_format(disguised).name == fmt


def test_prototxt_path_finds_its_caffemodel(aizoo_dir: Path) -> None:
    assert load_weights(aizoo_dir / "face_mask_detection.prototxt").format == "caffe"


def test_360_model_takes_its_input_size_from_the_keras_json(aizoo_dir: Path) -> None:
    loaded = load_weights(aizoo_dir / "model360.pth")
    assert loaded.spec.input_size == 360 and loaded.spec.num_anchors == 11000


def test_pth_and_caffe_agree(weight_files: dict[str, Path]) -> None:
    a = load_weights(weight_files["caffe"]).model
    b = load_weights(weight_files["pytorch"]).model
    x = torch.rand(2, 3, 260, 260)
    with torch.inference_mode():
        for ya, yb in zip(a(x), b(x)):
            assert torch.allclose(ya, yb, atol=1e-4)


def _assert_one_line_error(path: Path, match: str) -> None:
    with pytest.raises(WeightsError, match=match) as info:
        load_weights(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def test_missing_file(tmp_path: Path) -> None:
    _assert_one_line_error(tmp_path / "nope.pth", "no such weight file")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.caffemodel"
    p.touch()
    _assert_one_line_error(p, "empty")


def test_wrong_format(tmp_path: Path) -> None:
    p = tmp_path / "notes.pth"
    p.write_text("these are not weights\n" * 10)
    _assert_one_line_error(p, "not a known weight format")


@pytest.mark.parametrize("fmt", sorted(IMPORTERS))
@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_file(fmt: str, keep: float, weight_files: dict[str, Path], aizoo_dir: Path, tmp_path: Path) -> None:
    main = copy_format(weight_files, fmt, aizoo_dir, tmp_path)
    p = main.with_name("__params__") if fmt == "paddle" else main  # the paddle file with the tensors
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(WeightsError) as info:
        load_weights(main)
    assert str(p) in str(info.value) and "\n" not in str(info.value)


def test_truncated_paddle_program(aizoo_dir: Path, weight_files: dict[str, Path], tmp_path: Path) -> None:
    main = copy_format(weight_files, "paddle", aizoo_dir, tmp_path)
    main.write_bytes(main.read_bytes()[:100_000])
    _assert_one_line_error(main, "not a valid Paddle program")


def test_caffe_model_with_a_missing_layer(weight_files: dict[str, Path], tmp_path: Path) -> None:
    raw = read_weights(weight_files["caffe"])
    assert "loc_4_conv.weight" in raw.tensors
    # Rename one layer in the protobuf bytes: same length, so the file stays valid.
    data = weight_files["caffe"].read_bytes().replace(b"loc_4_conv", b"loc_4_xxxx")
    p = tmp_path / "broken.caffemodel"
    p.write_bytes(data)
    _assert_one_line_error(p, "layer 'loc_4_conv' is missing")


def test_pickle_naming_an_unknown_class_is_refused(tmp_path: Path) -> None:
    """A legacy checkpoint whose pickle names os.system must be refused, never executed."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001}):
            pickle.dump(obj, f, protocol=2)
        pickle.dump(Evil(), f, protocol=2)
    _assert_one_line_error(p, "refusing to load: the pickle names class 'posix.system'")
    assert not marker.exists()


def test_wrong_tensor_shapes(tmp_path: Path) -> None:
    from detector.model import AizooSSD
    from detector.spec import SPECS
    from detector.weights.convert import aizoo_layer_names

    names = {v: k for k, v in aizoo_layer_names(SPECS["aizoo-260"]).items()}
    sd = {}
    for key, t in AizooSSD(SPECS["aizoo-260"]).state_dict().items():
        module, kind = key.rsplit(".", 1)
        sd[f"{names[module]}.{kind}"] = t
    sd["conv2d_2.weight"] = torch.zeros(64, 32, 5, 5)
    p = tmp_path / "state.pth"
    torch.save(sd, p)
    _assert_one_line_error(p, r"layer 'conv2d_2' has shape \(64, 32, 5, 5\)")


def test_legacy_storage_size_mismatch(weight_files: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(weight_files["pytorch"].read_bytes())
    stream = io.BytesIO(bytes(data))
    for _ in range(5):  # magic, protocol, sys info, the module, the storage keys
        for _op in pickletools.genops(stream):
            pass
    end = stream.tell()  # the first storage's int64 element count starts here
    (count,) = struct.unpack("<q", data[end : end + 8])
    data[end : end + 8] = struct.pack("<q", count + 5)
    p = tmp_path / "corrupt.pth"
    p.write_bytes(bytes(data))
    _assert_one_line_error(p, "storage size mismatch")


@pytest.mark.parametrize("size", [260, 360])
def test_spec_conv_shapes_describe_the_model(size: int) -> None:
    from detector.model import AizooSSD
    from detector.spec import spec_for_input_size

    spec = spec_for_input_size(size)
    state = AizooSSD(spec).state_dict()
    want = {k.rsplit(".", 1)[0]: tuple(v.shape) for k, v in state.items() if k.endswith(".weight")}
    assert spec.conv_shapes == want


@pytest.mark.slow  # spawns a Python process
def test_the_driver_converts_weights_without_torch(pth_weights: Path, caffe_weights: Path) -> None:
    """What ``maskjobs run``'s process imports and does up to Ray: no torch (~1.5 s of CPU)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import jobs.cli.main\n"
        "from detector.weights import convert_weights\n"
        "from jobs.pipeline.actor import WeightsPayload\n"
        f"a = WeightsPayload.from_converted(convert_weights({str(pth_weights)!r}))\n"
        f"b = WeightsPayload.from_converted(convert_weights({str(caffe_weights)!r}))\n"
        "assert a.state.keys() == b.state.keys() and len(a.state) == 56\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr


def test_converted_weights_build_the_loaded_model(pth_weights: Path) -> None:
    from detector.weights import build, convert_weights

    converted = convert_weights(pth_weights)
    loaded = load_weights(pth_weights)
    built = build(converted)
    assert built.sha256 == loaded.sha256 == converted.sha256 and built.spec == loaded.spec
    for (k, a), (_, b) in zip(built.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize(
    "names", [["NoMask", "Mask"], ["mask", "no_mask"], ["Mask"], ["Mask", "NoMask", "Other"]], ids=str
)
def test_native_file_that_changes_the_class_names_is_refused(
    names: list[str], weight_files: dict[str, Path], tmp_path: Path
) -> None:
    """Label 0 is counted as masked everywhere: a file that renames or reorders its classes
    would silently invert the counts, so it fails to load, naming the file and the cause."""
    import json

    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(weight_files["native"]), framework="numpy") as f:
        metadata = dict(f.metadata())
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    assert json.loads(metadata["class_names"]) == ["Mask", "NoMask"]
    metadata["class_names"] = json.dumps(names)
    bad = tmp_path / "renamed.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(WeightsError, match="class_names") as info:
        load_weights(bad)
    assert info.value.path == str(bad) and "invert the masked counts" in info.value.cause
    assert "\n" not in str(info.value)
