"""One atomic-write helper: written aside as ``.NAME.<random>.part``, moved into place, swept."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from sinks.atomic import atomic_output, atomic_write, is_part, part_name, sweep
from tests.conftest import REPO, S3Server


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_the_name_written_aside_is_dot_prefixed_beside_the_target() -> None:
    name = part_name("part-a-0.parquet")
    assert name.startswith(".part-a-0.parquet.") and name.endswith(".part") and is_part(name)
    assert part_name("x") != part_name("x")
    assert is_part(".model.onnx.4242.0a1b2c3d.part")  # the earlier weights writer's name: pid, then hex
    assert is_part(".tmp-0f-part-a.parquet")  # the earlier output store's name
    assert not is_part("part-a-0.parquet") and not is_part(".hidden") and not is_part("notes.part")


def test_atomic_output_moves_the_complete_file_into_place(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model.safetensors"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and is_part(tmp.name) and not target.exists()
        tmp.write_bytes(b"complete")
    assert target.read_bytes() == b"complete"
    assert _names(target.parent) == ["model.safetensors"]


def test_atomic_output_that_fails_midway_leaves_the_old_file_and_nothing_aside(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError, match="exporter failed"):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half a graph")
            raise RuntimeError("exporter failed")
    assert _names(tmp_path) == []  # neither the target nor a .part
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"new, half")
            raise RuntimeError("exporter failed")
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["model.onnx"]


def test_atomic_write_on_a_local_filesystem_that_fails_midway_leaves_nothing(tmp_path: Path) -> None:
    fs, path = pafs.LocalFileSystem(), (tmp_path / "job.json").as_posix()

    def broken(stream) -> None:
        stream.write(b'{"half": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(fs, path, broken)
    assert _names(tmp_path) == []
    atomic_write(fs, path, lambda stream: stream.write(b"{}"))
    assert _names(tmp_path) == ["job.json"] and (tmp_path / "job.json").read_bytes() == b"{}"


@pytest.mark.slow  # spawns a Python process
def test_a_killed_writers_file_is_swept_after_the_grace_period(tmp_path: Path) -> None:
    """A writer killed mid-write (SIGKILL: no cleanup runs) leaves its .part, never the target."""
    target = tmp_path / "cache" / "face_mask_detection.pth"
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from sinks.atomic import atomic_output\n"
        "with atomic_output(Path(sys.argv[1])) as tmp:\n"
        "    tmp.write_bytes(b'partial download')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(target)], cwd=REPO, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    (left,) = target.parent.iterdir()
    assert is_part(left.name) and not target.exists()
    (target.parent / "notes.txt").write_text("a user's own file")

    assert sweep(target.parent, older_than_s=3600) == 0  # as young as a concurrent writer's: kept
    hours_ago = time.time() - 2 * 3600
    os.utime(left, (hours_ago, hours_ago))
    assert sweep(target.parent, older_than_s=3600) == 1
    assert _names(target.parent) == ["notes.txt"]


def test_sweep_without_a_grace_period_removes_all_and_can_recurse(tmp_path: Path) -> None:
    (tmp_path / "paddle").mkdir()
    for path in (tmp_path / ".a.bin.00112233aabbccdd.part", tmp_path / "paddle" / ".__model__.00112233aabbccdd.part"):
        path.write_bytes(b"x")
    assert sweep(tmp_path) == 1
    assert sweep(tmp_path, recursive=True) == 1
    assert sweep(tmp_path / "missing") == 0
    assert _names(tmp_path) == ["paddle"] and _names(tmp_path / "paddle") == []


def test_atomic_write_and_sweep_on_s3(s3_server: S3Server) -> None:
    fs, root = pafs.FileSystem.from_uri(s3_server.uri("atomic"))
    atomic_write(fs, f"{root}/job.json", lambda stream: stream.write(b"{}"))

    def broken(stream) -> None:
        stream.write(b"PAR1 partial")
        raise OSError("the connection dropped")

    with pytest.raises(OSError, match="connection dropped"):
        atomic_write(fs, f"{root}/videos.parquet", broken)
    with fs.open_output_stream(f"{root}/{part_name('tracks.parquet')}") as stream:
        stream.write(b"a killed writer's upload")
    assert sweep(root, fs=fs, older_than_s=3600) == 0
    assert sweep(root, fs=fs) == 1
    infos = fs.get_file_info(pafs.FileSelector(root))
    assert [i.base_name for i in infos] == ["job.json"]
    with fs.open_input_stream(f"{root}/job.json") as f:
        assert f.read() == b"{}"


def test_a_folder_that_refuses_fsync_still_gets_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some FUSE and network mounts refuse to open or fsync a folder: the write has happened."""
    import sinks.atomic as atomic

    real_open = os.open

    def no_folders(path: str | os.PathLike[str], flags: int, *args: int) -> int:
        if os.path.isdir(path):
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(atomic.os, "open", no_folders)
    target = tmp_path / "x.parquet"
    atomic_write(pafs.LocalFileSystem(), target.as_posix(), lambda f: f.write(b"data"))
    with atomic_output(tmp_path / "y.bin") as tmp:
        tmp.write_bytes(b"more")
    assert target.read_bytes() == b"data" and (tmp_path / "y.bin").read_bytes() == b"more"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.parquet", "y.bin"]


# -- issue 17 item 16: outputs are the owner's only -------------------------------------------------


@pytest.fixture
def loose_umask():
    """The usual umask 022 (files 0644, folders 0755 by default), whatever the test runner's."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_files_written_are_owner_only_whatever_the_umask(tmp_path: Path, loose_umask) -> None:
    with atomic_output(tmp_path / "new" / "deeper" / "cam.mp4") as tmp:  # creates its folders
        tmp.write_bytes(b"video")  # a library (ffmpeg) creates it with the umask's mode
    target = tmp_path / "new" / "deeper" / "tracks.parquet"
    atomic_write(pafs.LocalFileSystem(), str(target), lambda f: f.write(b"faces"))
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert modes == {
        "new": 0o700, "new/deeper": 0o700, "new/deeper/tracks.parquet": 0o600, "new/deeper/cam.mp4": 0o600,
    }


def test_an_existing_folder_keeps_its_mode(tmp_path: Path, loose_umask) -> None:
    from sinks.atomic import make_dirs

    (tmp_path / "shared").mkdir(mode=0o755)
    make_dirs(tmp_path / "shared" / "mine")
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "shared" / "mine").stat().st_mode & 0o777 == 0o700
