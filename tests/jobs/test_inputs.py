"""Finding the job's videos (``jobs.inputs.discover``): directories searched recursively by
extension, files taken as given, ids, and the errors for missing or clashing inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.errors import InputError
from jobs.inputs import VideoInput, discover
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


def test_several_inputs_are_merged_and_sorted_by_id(tmp_path: Path) -> None:
    _touch(tmp_path, "one/c.mp4", "one/a.mp4", "two/b.mp4", "d.mov")
    found = discover([str(tmp_path / "two"), str(tmp_path / "d.mov"), str(tmp_path / "one")])
    assert _ids(found) == ["a.mp4", "b.mp4", "c.mp4", "d.mov"]


def test_the_same_video_given_twice_is_listed_once(tmp_path: Path) -> None:
    _touch(tmp_path, "a.mp4")
    assert _ids(discover([str(tmp_path), str(tmp_path / "a.mp4"), str(tmp_path)])) == ["a.mp4"]


def test_two_videos_with_the_same_id_are_refused(tmp_path: Path) -> None:
    _touch(tmp_path, "north/cam.mp4", "south/cam.mp4")
    with pytest.raises(InputError) as info:
        discover([str(tmp_path / "north"), str(tmp_path / "south")])
    message = str(info.value)
    assert "same video id 'cam.mp4'" in message and "\n" not in message
    assert str(tmp_path / "north" / "cam.mp4") in message and str(tmp_path / "south" / "cam.mp4") in message


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
