"""Shared fixtures: the read-only shared data, the reference runtime, generated videos."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MASKJOBS_SHARED", REPO.parent / "shared")).resolve()
AIZOO = SHARED / "models" / "aizoo"
MEDIA = SHARED / "media"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: set MASKJOBS_SHARED to the shared data folder")
    return path


@pytest.fixture(scope="session")
def aizoo_dir() -> Path:
    return _require(AIZOO)


@pytest.fixture(scope="session")
def caffe_weights(aizoo_dir: Path) -> Path:
    return _require(aizoo_dir / "face_mask_detection.caffemodel")


@pytest.fixture(scope="session")
def pth_weights(aizoo_dir: Path) -> Path:
    return _require(aizoo_dir / "face_mask_detection.pth")


@pytest.fixture(scope="session")
def masked_photo() -> Path:
    return _require(MEDIA / "aizoo_demo2.jpg")


@pytest.fixture(scope="session")
def unmasked_photo() -> Path:
    return _require(MEDIA / "skimage_astronaut.png")


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


class ReferenceRuntime:
    """OpenCV 4.x DNN on the published Caffe model: the reference the port must equal."""

    def __init__(self, aizoo_dir: Path, size: int = 260) -> None:
        if not hasattr(cv2.dnn, "readNetFromCaffe"):
            pytest.fail("the reference needs OpenCV 4.x (opencv-python-headless<5) with the Caffe importer")
        self.size = size
        self.net = cv2.dnn.readNetFromCaffe(
            str(aizoo_dir / "face_mask_detection.prototxt"), str(aizoo_dir / "face_mask_detection.caffemodel")
        )

    def raw(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        blob = cv2.dnn.blobFromImage(rgb, scalefactor=1 / 255.0, size=(self.size, self.size))
        self.net.setInput(blob)
        loc, cls = self.net.forward(["loc_branch_concat", "cls_branch_concat"])
        return loc, cls


@pytest.fixture(scope="session")
def reference(aizoo_dir: Path) -> ReferenceRuntime:
    return ReferenceRuntime(aizoo_dir)


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class S3Server:
    """An S3 endpoint on 127.0.0.1 (moto) with one bucket."""

    port: int
    bucket: str = "maskjobs"

    def uri(self, key: str) -> str:
        """``s3://`` URI of ``key`` in the bucket, credentials and endpoint in the URI."""
        return (
            f"s3://testing:testing@{self.bucket}/{key}"
            f"?endpoint_override=127.0.0.1:{self.port}&scheme=http&region=us-east-1"
        )

    def env_uri(self, key: str) -> str:
        """``s3://`` URI of ``key`` without credentials (they come from ``AWS_*`` variables)."""
        return f"s3://{self.bucket}/{key}?endpoint_override=127.0.0.1:{self.port}&scheme=http&region=us-east-1"

    def put(self, key: str, data: bytes) -> None:
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(self.uri("x"))
        with fs.open_output_stream(f"{self.bucket}/{key}") as f:
            f.write(data)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    import logging

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # never ask a metadata service
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        s3 = S3Server(server.get_host_and_port()[1])
        fs, _ = pafs.FileSystem.from_uri(s3.uri("x") + "&allow_bucket_creation=true")
        fs.create_dir(s3.bucket)
        yield s3
    finally:
        server.stop()
