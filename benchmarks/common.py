"""What every benchmark shares: where the shared data is, the default weights, the Caffe pair
OpenCV runs, the shared photos, the machine line printed above each table, and decoded frames.

Benchmarks import these public names from here (and videos from :mod:`benchmarks.videos`,
footage from :mod:`benchmarks.videogen`), never private helpers from each other.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
# The published model's files under the shared folder (.caffemodel, .prototxt, .pth ...).
_AIZOO_BASE = Path("models") / "aizoo" / "face_mask_detection"
_PHOTOS = ("aizoo_demo2.jpg", "skimage_astronaut.png")


def shared_dir() -> Path:
    """The read-only shared data folder: ``$MASKJOBS_SHARED``, else ``../shared`` beside the repository."""
    return Path(os.environ.get("MASKJOBS_SHARED", REPO.parent / "shared"))


def default_weights() -> Path:
    """``$MASKJOBS_WEIGHTS``, else the shared published Caffe model."""
    env = os.environ.get("MASKJOBS_WEIGHTS")
    return Path(env) if env else (shared_dir() / _AIZOO_BASE).with_suffix(".caffemodel")


def caffe_pair(weights: Path) -> tuple[Path, Path]:
    """The Caffe pair OpenCV runs, ``(prototxt, caffemodel)``: beside ``weights`` if it is one,
    else the shared copy."""
    if weights.suffix in (".caffemodel", ".prototxt"):
        return weights.with_suffix(".prototxt"), weights.with_suffix(".caffemodel")
    base = shared_dir() / _AIZOO_BASE
    return base.with_suffix(".prototxt"), base.with_suffix(".caffemodel")


def load_photos() -> list[np.ndarray]:
    """The shared photos that exist, each (H, W, 3) uint8 RGB (none if the shared folder is missing)."""
    import cv2

    media = shared_dir() / "media"
    photos = []
    for name in _PHOTOS:
        bgr = cv2.imread(str(media / name))
        if bgr is not None:
            photos.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if not photos:
        logger.warning("no photos under %s: using random frames", media)
    return photos


_SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


def machine() -> str:
    """One line: architecture, CPUs this process may use, their model and SIMD flags (AVX2 vs
    AVX-512 changes OpenCV DNN's speed ~1.6x, so compare ratios only within one run), and the
    versions of Python, torch, OpenCV, numpy and decord."""
    import cv2
    import torch

    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    simd = " ".join(f for f in _SIMD_FLAGS if f in flags) or "no AVX2"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{platform.machine()}, {cores} CPUs ({model}; {simd}); python {platform.python_version()}, "
        f"torch {torch.__version__}, OpenCV {cv2.__version__}, numpy {np.__version__}, {_decord_version()}"
    )


def _decord_version() -> str:
    """Which distribution provides ``import decord``: decord2 (the maintained fork) or decord."""
    for dist in ("decord2", "decord"):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "no decord"


def decoded_batches(path: Path, frames: int, batch: int, which: Sequence[int] | None = None) -> Iterator[dict]:
    """The batches a job's decode task yields for ``path`` (frames ``which``, else the first
    ``frames``), resized to 260x260: ``jobs.pipeline.decode.decode_shard``'s dicts, whose
    ``"frames"`` is (n, 260, 260, 3) uint8 RGB and ``"frame"`` the n source indices."""
    from jobs.pipeline.decode import Started, decode_shard
    from jobs.pipeline.plan import Segment, Shard

    shard = Shard("bench", (Segment(path.name, str(path), tuple(which if which is not None else range(frames))),))
    for item in decode_shard(shard, input_size=260, batch_size=batch):
        if not isinstance(item, Started):
            yield item
