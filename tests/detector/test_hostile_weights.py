"""Weight files as untrusted input (issue 17, items 12-14): hostile layouts, expansions, other
files read through HDF5, unbounded input sizes, and a fuzz over every importer.

Files that could make a reader allocate gigabytes are loaded in a child process
(:mod:`tests.detector.weight_probe`) under a 2 GiB address-space limit: a reader that tries
ends in ``MemoryError`` there ("crash"), and a segfault is a non-zero return code, never a
dead test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector.errors import WeightsError
from detector.weights import IMPORTERS, convert_weights, read_weights
from tests.detector import hostile_weights as hw
from tests.detector.weight_files import PUBLISHED, build_weight_files

ROOT = Path(__file__).parents[2]
LIMIT_MB = 2048  # the child's address space: far below what any expansion here would take
PEAK_MB = 200  # the bound on a child's peak RSS (VmHWM) while it loads every file; measured ~60 MB
FUZZ_PER_FORMAT = 100
FUZZ_SEED = 17


@pytest.fixture(scope="module")
def weight_files(aizoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_weight_files(aizoo_dir, tmp_path_factory.getbasetemp() / "weight-files")


def probe(job: dict, tmp: Path, *, timeout: float = 300) -> tuple[dict[str, dict], float]:
    """Runs :mod:`tests.detector.weight_probe` on ``job``: ``({name: record}, peak RSS in MB)``."""
    job = {"limit_mb": LIMIT_MB, **job}
    spec = tmp / "job.json"
    spec.write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, "-m", "tests.detector.weight_probe", str(spec)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    last = lines[-1]["name"] if lines and "name" in lines[-1] else "(none)"
    assert proc.returncode == 0, f"the loader died (rc {proc.returncode}) after {last}: {proc.stderr[-2000:]}"
    records = {r["name"]: r for r in lines if "name" in r}
    return records, lines[-1]["maxrss_mb"]


# -- item 12 and 13: one hostile file per hole ---------------------------------------------------------

# name -> (outcome, fragment of the one-line message); "ok": loads, the hostile part never read
EXPECTED = {
    "pth_negative_stride": ("error", "has stride -1 on an axis of size 32"),
    "pth_negative_offset": ("error", "negative storage offset -5"),
    "pth_zero_stride_kernel": ("error", "has stride 0 on an axis of size 32"),
    "pth_zero_stride_huge_286_bytes": ("error", "layer 'conv2d_0' has shape (60000, 60000)"),
    "pth_zero_stride_huge_unused": ("ok", "input 260, 56 tensors"),
    "pth_reach_past_storage": ("error", "reaches element 32 of a 32-element storage"),
    "zip_zero_stride_huge": ("error", "layer 'conv2d_0' has shape (20000, 20000, 3, 3)"),
    "pb_splat_60_bytes": ("error", "layer 'conv2d_0' has shape (60000, 60000, 1, 1) (HWIO)"),
    "pb_input_20000": ("error", "declares an input of 20000 px; accepted: 32 to 1024"),
    "pb_rebuilt_input_260": ("ok", "input 260, 56 tensors"),
    "keras_never_written_huge": ("error", "layer 'conv2d_0' has shape (60000, 60000, 3, 3) (HWIO)"),
    "keras_never_written": ("error", "was never written"),
    "keras_external_storage": ("error", "keeps its data in external files"),
    "keras_external_link": ("error", "is an external link to another file"),
    "keras_input_20000": ("error", "declares an input of 20000 px"),
    "tflite_input_20000": ("error", "declares an input of 20000 px"),
    "native_input_20000": ("error", "declares an input of 20000 px"),
    "sidecar_json_input_20000": ("error", "the Keras JSON declares an input of 20000 px"),
}


def _build(weight_files: dict[str, Path], aizoo_dir: Path, tmp: Path) -> dict[str, Path]:
    import torch

    pth = aizoo_dir / "face_mask_detection.pth"
    files: dict[str, Path] = {}

    def folder(name: str) -> Path:
        (tmp / name).mkdir(parents=True, exist_ok=True)
        return tmp / name

    bias = hw.Storage("bias", np.arange(32, dtype=np.float32))
    files["pth_negative_stride"] = hw.legacy_with(pth, folder("a") / "m.pth",
                                                  conv2d_0__bias=hw.Tensor(bias, 0, (32,), (-1,)))
    files["pth_negative_offset"] = hw.legacy_with(pth, folder("b") / "m.pth",
                                                  conv2d_0__bias=hw.Tensor(bias, -5, (32,), (1,)))
    one = hw.Storage("one", np.ones(1, np.float32))
    files["pth_zero_stride_kernel"] = hw.legacy_with(pth, folder("c") / "m.pth",
                                                     conv2d_0__weight=hw.Tensor(one, 0, (32, 3, 3, 3), (0, 0, 0, 0)))
    files["pth_zero_stride_huge_286_bytes"] = hw.write_legacy_pth(
        folder("d") / "m.pth", {"conv2d_0.weight": hw.Tensor(one, 0, hw.HUGE, (0, 0))})
    files["pth_zero_stride_huge_unused"] = hw.legacy_with(pth, folder("e") / "m.pth",
                                                          huge_buffer=hw.Tensor(one, 0, hw.HUGE, (0, 0)))
    files["pth_reach_past_storage"] = hw.legacy_with(pth, folder("f") / "m.pth",
                                                     conv2d_0__bias=hw.Tensor(bias, 1, (32,), (1,)))
    state = {k: torch.from_numpy(v) for k, v in read_weights(pth).tensors.items()}
    state["conv2d_0.weight"] = torch.zeros(1).expand(20000, 20000, 3, 3)  # one float stored, stride 0
    files["zip_zero_stride_huge"] = folder("g") / "m.pth"
    torch.save(state, files["zip_zero_stride_huge"])
    files["pb_splat_60_bytes"] = hw.splat_graph(folder("h") / "m.pb")
    hwio = read_weights(aizoo_dir / "face_mask_detection.pb").tensors
    files["pb_input_20000"] = hw.write_graph(folder("i") / "m.pb", hwio, input_side=20000)
    files["pb_rebuilt_input_260"] = hw.write_graph(folder("j") / "m.pb", hwio, input_side=260)
    keras = weight_files["keras"]
    files["keras_never_written_huge"] = hw.keras_never_written(keras, folder("k"), huge=True)
    files["keras_never_written"] = hw.keras_never_written(keras, folder("l"), huge=False)
    files["keras_external_storage"] = hw.keras_external_storage(keras, folder("m"), tmp / "secret.bin")
    files["keras_external_link"] = hw.keras_external_link(keras, folder("n"))
    files["keras_input_20000"] = hw.keras_input_side(keras, folder("o"), 20000)
    files["tflite_input_20000"] = hw.tflite_input_side(aizoo_dir / "face_mask_detection.tflite", folder("p"), 20000)
    files["native_input_20000"] = hw.native_with_metadata(weight_files["native"], folder("q"), input_size="20000")
    sidecar = folder("r")
    (sidecar / "m.pth").write_bytes(pth.read_bytes())
    config = json.loads((aizoo_dir / "face_mask_detection.json").read_text())
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "InputLayer":
            layer["config"]["batch_input_shape"] = [None, 20000, 20000, 3]
    (sidecar / "m.json").write_text(json.dumps(config))
    files["sidecar_json_input_20000"] = sidecar / "m.pth"
    assert sorted(files) == sorted(EXPECTED)
    return files


@pytest.fixture(scope="module")
def hostile(weight_files: dict[str, Path], aizoo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("hostile")
    files = _build(weight_files, aizoo_dir, tmp)
    records, peak = probe({"block_torch": False, "loads": [{"name": n, "path": str(p)} for n, p in files.items()]}, tmp)
    print(f"\nhostile files: peak RSS {peak:.0f} MB (bound {PEAK_MB} MB, address space {LIMIT_MB} MB)")
    for name, r in records.items():
        print(f"  {name:32s} {(files[name].stat().st_size):>9d} B  rss {r['maxrss_mb']:4.0f} MB  {r['outcome']:5s}  "
              f"{r['message'][len(str(files[name].parent)) + 1:][:110]}")
    return files, records, peak


@pytest.mark.slow  # spawns a Python process
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_weight_file(name: str, hostile) -> None:
    files, records, _ = hostile
    outcome, fragment = EXPECTED[name]
    got = records[name]
    assert (got["outcome"], fragment in got["message"]) == (outcome, True), got
    if outcome == "error":
        assert "\n" not in got["message"] and got["message"].startswith(str(files[name].parent)), got


@pytest.mark.slow  # spawns a Python process
def test_hostile_files_load_in_bounded_memory(hostile) -> None:
    _, _, peak = hostile
    assert peak < PEAK_MB, f"peak RSS {peak:.0f} MB"


@pytest.mark.parametrize("offset,stride", [(0, -1), (-5, 1), (0, 0), (1, 1)])
def test_a_layout_outside_its_storage_is_refused_in_process(offset: int, stride: int, pth_weights: Path,
                                                            tmp_path: Path) -> None:
    """The fast-layer twin of the hostile files above (none of these can allocate much on any version)."""
    bias = hw.Storage("bias", np.arange(32, dtype=np.float32))
    p = hw.legacy_with(pth_weights, tmp_path / "m.pth", conv2d_0__bias=hw.Tensor(bias, offset, (32,), (stride,)))
    with pytest.raises(WeightsError, match=r"conv2d_0\.bias"):
        read_weights(p)


def test_zip_checkpoint_is_read_without_torch(pth_weights: Path, tmp_path: Path, monkeypatch) -> None:
    """A ``torch.save`` zip is read by the restricted reader: ``torch.load`` (unsafe before torch 2.6)
    is never called, so a machine without torch (or with an old one) reads it the same."""
    import torch

    want = read_weights(pth_weights).tensors
    p = tmp_path / "state.pth"
    torch.save({k: torch.from_numpy(v) for k, v in want.items()}, p)
    monkeypatch.setitem(sys.modules, "torch", None)
    got = read_weights(p).tensors
    assert sorted(got) == sorted(want)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_zip_checkpoint_naming_a_foreign_class_is_refused(tmp_path: Path) -> None:
    import pickle
    import zipfile

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            import os

            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pth"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps({"conv2d_0.weight": Evil()}, protocol=2))
        zf.writestr("evil/version", "3\n")
    with pytest.raises(WeightsError, match="refusing to load: the pickle names class 'posix.system'"):
        read_weights(p)
    assert not marker.exists()


@pytest.mark.parametrize("size", [20000, 16, 0])
def test_requested_input_size_is_capped(size: int, caffe_weights: Path) -> None:
    with pytest.raises(WeightsError, match="accepted: 32 to 1024"):
        convert_weights(caffe_weights, input_size=size or -1)


def test_input_size_within_the_cap_still_loads(caffe_weights: Path) -> None:
    assert convert_weights(caffe_weights, input_size=360).spec.input_size == 360


# -- item 14: a fuzz over every importer ---------------------------------------------------------------


def _fuzz_sources(weight_files: dict[str, Path], aizoo_dir: Path, tmp: Path) -> list[dict]:
    """One folder per format holding its file(s); which file is mutated, which one is loaded."""
    jobs = []
    for fmt in sorted(IMPORTERS):
        folder = tmp / fmt
        folder.mkdir()
        if fmt in PUBLISHED:
            names = PUBLISHED[fmt]
            for name in names:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes((aizoo_dir / name).read_bytes())
            main = names[0]
            targets = [n for n in names if not n.endswith(".prototxt")]  # the prototxt is not read
        else:
            main = weight_files[fmt].name
            for companion in weight_files[fmt].parent.glob(f"{weight_files[fmt].stem}.*"):
                if companion.suffix in (".json", weight_files[fmt].suffix):
                    (folder / companion.name).write_bytes(companion.read_bytes())
            targets = [main]
        jobs.append({"format": fmt, "dir": str(folder), "main": main, "targets": targets,
                     "seed": FUZZ_SEED, "count": FUZZ_PER_FORMAT})
    return jobs


@pytest.mark.slow  # spawns a Python process
def test_fuzzed_weight_files_fail_cleanly_in_bounded_memory(
    weight_files: dict[str, Path], aizoo_dir: Path, tmp_path: Path
) -> None:
    """100 mutated files per importer (bit flips, truncations, integer overwrites of length fields,
    enlarged shapes; seeded): each loads correctly or fails with one line naming its file; the
    loading process never crashes and its peak RSS stays under ``PEAK_MB``."""
    jobs = _fuzz_sources(weight_files, aizoo_dir, tmp_path)
    records, peak = probe({"block_torch": True, "fuzz": jobs}, tmp_path, timeout=600)
    assert len(records) == FUZZ_PER_FORMAT * len(IMPORTERS)
    by_format: dict[str, dict[str, int]] = {}
    bad = []
    for name, r in records.items():
        counts = by_format.setdefault(name.split("#")[0], {"ok": 0, "error": 0, "crash": 0})
        counts[r["outcome"]] += 1
        clean = r["outcome"] == "ok" or (
            r["outcome"] == "error" and "\n" not in r["message"] and r["message"].startswith(r["dir"])
        )
        if not clean:
            bad.append(f"{name}: {r['outcome']}: {r['message'][:200]}")
    print(f"\nfuzz: {FUZZ_PER_FORMAT} files per format, seed {FUZZ_SEED}, peak RSS {peak:.0f} MB (bound {PEAK_MB})")
    for fmt, counts in sorted(by_format.items()):
        print(f"  {fmt:10s} ok {counts['ok']:3d}  error {counts['error']:3d}  crash {counts['crash']:3d}")
    assert not bad, f"{len(bad)} unclean outcomes:\n" + "\n".join(bad[:30])
    assert peak < PEAK_MB, f"peak RSS {peak:.0f} MB"
