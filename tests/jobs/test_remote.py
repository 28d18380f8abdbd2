"""Inputs in object storage: listing a prefix like a folder, staging objects in a bounded cache
per node, and keeping credentials out of every message (moto's S3 on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.errors import InputError
from jobs.inputs import discover
from jobs.remote import list_videos
from jobs.stage import StageError, _copies, clear_stage, staged
from tests.conftest import S3Server

SECRET = "s3cr3t-never-shown-0123456789"


@pytest.fixture
def env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_a_prefix_lists_like_a_folder_and_a_key_is_a_file(s3_server: S3Server, env_credentials: None) -> None:
    for key in ("listing/cams/north/a.mp4", "listing/cams/b b.MKV", "listing/notes.txt", "listing/top.mov",
                "other/x.mp4"):
        s3_server.put(key, b"not really a video")
    listed = list_videos(s3_server.env_uri("listing"))
    assert [vid for vid, _ in listed] == ["cams/b b.MKV", "cams/north/a.mp4", "top.mov"]
    assert all(uri.endswith(s3_server.env_uri("x").split("?", 1)[1]) for _, uri in listed)  # pyarrow's options kept
    assert list_videos(listed[0][1]) == [("b b.MKV", listed[0][1])]  # a listed URI names the same object again
    assert list_videos(s3_server.env_uri("listing/notes.txt"))[0][0] == "notes.txt"  # a file given directly: any name
    videos = discover([s3_server.env_uri("listing/"), s3_server.env_uri("other/x.mp4")])
    assert [v.video for v in videos] == ["cams/b b.MKV", "cams/north/a.mp4", "top.mov", "x.mp4"]


def test_a_missing_prefix_is_one_line_without_credentials(s3_server: S3Server) -> None:
    with pytest.raises(InputError) as caught:
        discover([s3_server.uri("nothing/here")])  # credentials in the URI
    message = str(caught.value)
    assert message == "s3://maskjobs/nothing/here: no such file or prefix"
    with pytest.raises(InputError, match=r"^s3://maskjobs/empty: no such file or prefix$"):
        discover([s3_server.env_uri("empty")])


def test_each_object_is_staged_once_per_node_and_evicted_least_recently_used_first(
    s3_server: S3Server, env_credentials: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in "abc":
        s3_server.put(f"stage/{name}.mp4", name.encode() * 1000)
    uri = {name: s3_server.env_uri(f"stage/{name}.mp4") for name in "abc"}
    folder = tmp_path / "stage"
    folder.mkdir()
    with caplog.at_level("INFO", logger="jobs.stage"):
        with staged(uri["a"], folder=folder, limit=2500) as first:
            assert first.read_bytes() == b"a" * 1000
        with staged(uri["a"], folder=folder, limit=2500) as again:
            assert again == first
    assert caplog.text.count("staged s3://maskjobs/stage/a.mp4: 1000 bytes") == 1  # downloaded once
    with staged(uri["b"], folder=folder, limit=2500):
        pass
    with staged(uri["a"], folder=folder, limit=2500):  # a is now the most recently used
        pass
    with staged(uri["c"], folder=folder, limit=2500) as c:
        assert c.read_bytes() == b"c" * 1000
    assert sorted(p.read_bytes()[:1] for p in _copies(folder)) == [b"a", b"c"]  # b went

    with staged(uri["a"], folder=folder, limit=2500) as held:  # a copy being read is never evicted
        with staged(uri["b"], folder=folder, limit=2500):
            pass
        assert held.exists()
        assert sorted(p.read_bytes()[:1] for p in _copies(folder)) == [b"a", b"b"]
        assert clear_stage(folder) == 1000  # b freed; a is being read
        assert [p.read_bytes()[:1] for p in _copies(folder)] == [b"a"]
    assert clear_stage(folder) == 1000 and _copies(folder) == []


def test_staging_errors_are_one_line_without_credentials(s3_server: S3Server, tmp_path: Path) -> None:
    s3_server.put("stage/big.mp4", b"x" * 5000)
    with pytest.raises(StageError, match=r"^cannot read it \(no such object\)$"):
        with staged(s3_server.uri("stage/missing.mp4"), folder=tmp_path):
            pass
    with pytest.raises(StageError, match="5,000 bytes do not fit the stage cache"):
        with staged(s3_server.uri("stage/big.mp4"), folder=tmp_path, limit=4000):
            pass
    assert list(tmp_path.iterdir()) == []
