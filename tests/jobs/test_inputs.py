"""Finding the job's videos (``jobs.inputs.discover``): directories searched recursively by
extension, files taken as given, ids, and the errors for missing or clashing inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.errors import InputError
from jobs.inputs import VideoInput, discover, escape_name
from jobs.media import VIDEO_EXTENSIONS


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not decoded here")


def _ids(found: list[VideoInput]) -> list[str]:
    return [v.video for v in found]


def test_a_directory_is_searched_recursively_and_ids_are_relative_paths(tmp_path: Path) -> None:
    _touch(tmp_path, "b.mp4", "a.MKV", "cams/north/x.webm", "cams/y.avi", "deep/er/still/z.mov")
    found = discover([str(tmp_path)])
    assert _ids(found) == ["a.MKV", "b.mp4", "cams/north/x.webm", "cams/y.avi", "deep/er/still/z.mov"]
    for item in found:
        assert Path(item.path).is_absolute() and Path(item.path) == tmp_path / item.video


def test_only_video_extensions_count_in_a_directory(tmp_path: Path) -> None:
    _touch(tmp_path, "clip.mp4", "notes.txt", "photo.jpg", "clip.mp4.part", "README", "sub/audio.wav")
    (tmp_path / "folder.mp4").mkdir()  # a directory with a video's name is searched, not taken
    _touch(tmp_path / "folder.mp4", "inner.ts")
    assert _ids(discover([str(tmp_path)])) == ["clip.mp4", "folder.mp4/inner.ts"]


@pytest.mark.parametrize("suffix", sorted(VIDEO_EXTENSIONS))
def test_every_video_extension_is_found_in_any_case(tmp_path: Path, suffix: str) -> None:
    _touch(tmp_path, f"lower{suffix}", f"upper{suffix.upper()}")
    assert _ids(discover([str(tmp_path)])) == [f"lower{suffix}", f"upper{suffix.upper()}"]


def test_a_named_pipe_with_a_video_extension_is_found(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this platform")
    os.mkfifo(tmp_path / "live.ts")  # never opened by discovery
    assert _ids(discover([str(tmp_path)])) == ["live.ts"]


def test_a_link_to_nothing_with_a_video_extension_is_found_so_it_fails_as_its_own_video(tmp_path: Path) -> None:
    """A camera folder's link into a share that is not mounted, or a loop of links: it was
    skipped without a word (exit 0, its footage missing from the job); now it is a video that
    fails "a link to nothing" (``jobs.video.open_video``)."""
    from jobs.video import VideoReadError, open_video

    _touch(tmp_path, "cam/ok.mp4", "cam/notes.txt")
    (tmp_path / "cam" / "lost.mp4").symlink_to(tmp_path / "nas" / "lost.mp4")
    (tmp_path / "cam" / "loop1.mkv").symlink_to(tmp_path / "cam" / "loop2.mkv")
    (tmp_path / "cam" / "loop2.mkv").symlink_to(tmp_path / "cam" / "loop1.mkv")
    (tmp_path / "cam" / "lost.txt").symlink_to(tmp_path / "nas" / "lost.txt")  # not a video's name
    found = discover([str(tmp_path)])
    assert _ids(found) == ["cam/loop1.mkv", "cam/loop2.mkv", "cam/lost.mp4", "cam/ok.mp4"]
    for item in found[:3]:
        with pytest.raises(VideoReadError) as info:
            open_video(item.path)
        assert str(info.value) == f"{item.path}: a link to nothing (broken symbolic link)"


def test_a_file_given_directly_is_taken_whatever_its_extension_and_named_by_its_file_name(tmp_path: Path) -> None:
    _touch(tmp_path, "cams/footage.bin", "cams/b.mp4")
    found = discover([str(tmp_path / "cams" / "footage.bin"), str(tmp_path / "cams" / "b.mp4")])
    assert found == [
        VideoInput("b.mp4", str(tmp_path / "cams" / "b.mp4")),
        VideoInput("footage.bin", str(tmp_path / "cams" / "footage.bin")),
    ]


def test_a_relative_input_gives_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch(tmp_path, "videos/a.mp4")
    monkeypatch.chdir(tmp_path)
    assert discover(["videos"]) == [VideoInput("a.mp4", str(tmp_path / "videos" / "a.mp4"))]


def test_several_inputs_are_merged_and_named_under_their_common_folder(tmp_path: Path) -> None:
    _touch(tmp_path, "one/c.mp4", "one/a.mp4", "two/b.mp4", "d.mov")
    found = discover([str(tmp_path / "two"), str(tmp_path / "d.mov"), str(tmp_path / "one")])
    assert _ids(found) == ["d.mov", "one/a.mp4", "one/c.mp4", "two/b.mp4"]
    for item in found:
        assert Path(item.path) == tmp_path / item.video


def test_the_same_video_given_twice_is_listed_once(tmp_path: Path) -> None:
    _touch(tmp_path, "a.mp4")
    assert _ids(discover([str(tmp_path), str(tmp_path / "a.mp4"), str(tmp_path)])) == ["a.mp4"]


def test_the_same_file_name_in_two_folders_gives_two_ids(tmp_path: Path) -> None:
    """Issue 17 item 3: ``run cams1/ cams2/`` with the same name in both was refused whole."""
    _touch(tmp_path, "north/cam.mp4", "south/cam.mp4", "south/other.mp4")
    found = discover([str(tmp_path / "north"), str(tmp_path / "south")])
    assert _ids(found) == ["north/cam.mp4", "south/cam.mp4", "south/other.mp4"]
    # argument order does not matter
    assert discover([str(tmp_path / "south"), str(tmp_path / "north")]) == found


def test_folders_with_the_same_name_in_different_places_are_told_apart(tmp_path: Path) -> None:
    _touch(tmp_path, "site1/cams/cam.mp4", "site2/cams/cam.mp4")
    found = discover([str(tmp_path / "site1" / "cams"), str(tmp_path / "site2" / "cams")])
    assert _ids(found) == ["site1/cams/cam.mp4", "site2/cams/cam.mp4"]


def test_a_file_inside_a_given_folder_is_one_video(tmp_path: Path) -> None:
    """``run vids/ vids/sub/a.mp4`` processed one file twice, as ``a.mp4`` and ``sub/a.mp4``."""
    _touch(tmp_path, "vids/sub/a.mp4", "vids/b.mp4")
    vids = tmp_path / "vids"
    for inputs in ([vids, vids / "sub" / "a.mp4"], [vids / "sub" / "a.mp4", vids], [vids, vids / "sub"]):
        found = discover([str(p) for p in inputs])
        assert _ids(found) == ["b.mp4", "sub/a.mp4"], inputs


def test_a_folder_spelt_two_ways_is_one_input_with_the_same_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``vids`` and ``vids/../vids`` gave different paths (and a symlink to it another input)."""
    _touch(tmp_path, "vids/a.mp4", "vids/sub/b.mp4")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alias").symlink_to(tmp_path / "vids")
    plain = discover(["vids"])
    assert discover(["vids/../vids"]) == plain
    assert discover([str(tmp_path / "alias")]) == plain
    assert discover(["vids", "vids/../vids", "alias", "./vids/"]) == plain
    assert _ids(plain) == ["a.mp4", "sub/b.mp4"]


def test_the_output_folder_inside_an_input_folder_is_not_searched(tmp_path: Path) -> None:
    """An ``--out`` inside the input folder must not feed its annotated MP4s back in."""
    _touch(tmp_path, "vids/a.mp4", "vids/results/annotated/a.mp4.mp4", "vids/results/annotated/x.mp4")
    found = discover([str(tmp_path / "vids")], exclude=[str(tmp_path / "vids" / "results")])
    assert _ids(found) == ["a.mp4"]
    # spelt another way, or relative: the same folder
    found = discover([str(tmp_path / "vids")], exclude=[str(tmp_path / "vids" / "." / "results" / "")])
    assert _ids(found) == ["a.mp4"]


def test_appledouble_files_are_not_videos(tmp_path: Path) -> None:
    _touch(tmp_path, "a.mp4", "._a.mp4", "sub/._b.MOV", "sub/b.mov")
    assert _ids(discover([str(tmp_path)])) == ["a.mp4", "sub/b.mov"]


def test_a_file_name_that_is_not_utf8_is_found_and_its_id_escaped(tmp_path: Path) -> None:
    """Issue 17 item 1: ``caf\\xe9.mp4`` (Latin-1) must get a text id, and still be opened by its name."""
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.mp4")
    with open(raw, "wb") as f:
        f.write(b"bytes")
    _touch(tmp_path, "plain.mp4")
    found = discover([str(tmp_path)])
    assert _ids(found) == ["caf\\xe9.mp4", "plain.mp4"]
    assert found[0].video.encode("utf-8")  # valid text, so Parquet can hold it
    assert os.fsencode(found[0].path) == raw  # opened by its real name
    assert escape_name(found[0].path) == str(tmp_path / "caf\\xe9.mp4")


def test_escape_name_leaves_text_alone() -> None:
    assert escape_name("caméra/é.mp4") == "caméra/é.mp4"
    assert escape_name(os.fsdecode(b"\xff\xfe.mp4")) == "\\xff\\xfe.mp4"


def test_a_control_character_in_a_name_is_escaped_so_the_id_is_one_line(tmp_path: Path) -> None:
    """A newline in a file name split the summary table's row and the error line in two."""
    _touch(tmp_path, "bad\nname.mp4", "tab\there.mp4")
    found = discover([str(tmp_path)])
    assert _ids(found) == ["bad\\x0aname.mp4", "tab\\x09here.mp4"]
    assert Path(found[0].path).name == "bad\nname.mp4"  # opened by its real name
    assert escape_name("caf\u00e9\x7f.mp4") == "caf\u00e9\\x7f.mp4"


@pytest.mark.slow  # spawns a process (dropping root, who reads every folder, where it runs as root)
def test_an_unreadable_folder_is_reported_by_name() -> None:
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # under /tmp: a dropped user can reach it
        root = Path(tmp)
        root.chmod(0o755)
        _touch(root, "vids/a.mp4", "vids/locked/b.mp4")
        locked = root / "vids" / "locked"
        locked.chmod(0)
        code = (
            "import logging, os, sys\n"
            "from jobs.inputs import discover\n"
            "if os.geteuid() == 0:\n"
            "    os.setgid(65534); os.setuid(65534)\n"
            "logging.basicConfig(stream=sys.stderr, format='%(levelname)s %(message)s')\n"
            f"print([v.video for v in discover([{str(root / 'vids')!r}])])\n"
        )
        try:
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                  cwd=Path(__file__).resolve().parents[2])
        finally:
            locked.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['a.mp4']"
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and str(locked) in warnings[0] and "cannot read" in warnings[0], proc.stderr


def test_a_missing_input_is_refused(tmp_path: Path) -> None:
    _touch(tmp_path, "a.mp4")
    with pytest.raises(InputError, match="no such file or directory") as info:
        discover([str(tmp_path), str(tmp_path / "absent.mp4")])
    assert str(info.value).startswith(str(tmp_path / "absent.mp4"))


def test_no_video_at_all_is_refused(tmp_path: Path) -> None:
    _touch(tmp_path, "a/notes.txt", "b/readme.md")
    with pytest.raises(InputError, match="no video files found in") as info:
        discover([str(tmp_path / "a"), str(tmp_path / "b")])
    assert f"{tmp_path / 'a'}, {tmp_path / 'b'}" in str(info.value)
