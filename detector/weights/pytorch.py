"""PyTorch ``.pth`` importer: MMdnn's whole-module pickle or a plain state dict."""

from __future__ import annotations

import zipfile
from pathlib import Path

from detector.weights.convert import RawWeights
from detector.weights.torch_pickle import read_torch_checkpoint

_LEGACY_HEAD = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def sniff(head: bytes, path: Path) -> bool:
    return head.startswith(_LEGACY_HEAD) or (head.startswith(b"PK") and zipfile.is_zipfile(path))


def read(path: Path) -> RawWeights:
    tensors = read_torch_checkpoint(path)
    # The MMdnn export keeps Keras' BatchNorm (epsilon 1e-3) as separate layers.
    return RawWeights(path=path, format="pytorch", tensors=tensors, layout="OIHW", bn_eps=1e-3)
