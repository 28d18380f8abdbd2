"""Which weight file a command uses, and the user cache the published files are fetched into.

Resolution: ``--weights``, else ``MASKJOBS_WEIGHTS``, else the first of the cache's files
in :data:`_CACHED_NAMES` (the native ``.safetensors`` first). ``maskjobs models fetch``
downloads AIZOO's published files at a pinned commit, checks each one's SHA-256 and only
then moves it into the cache, so the cache never holds a partial or unverified file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from detector.weights import sha256_of
from jobs.errors import InputError, WeightsError
from sinks.atomic import atomic_output, sweep

logger = logging.getLogger(__name__)

ENV_VAR = "MASKJOBS_WEIGHTS"
URL_ENV_VAR = "MASKJOBS_WEIGHTS_URL"
_CACHED_NAMES = (
    "face_mask_detection.safetensors",
    "face_mask_detection.caffemodel",
    "face_mask_detection.pth",
    "face_mask_detection.pb",
    "face_mask_detection.tflite",
    "face_mask_detection.params",
    "paddle/__model__",
)

# AIZOOTech/FaceMaskDetection at this commit; files under models/ there.
PINNED_COMMIT = "256dc65"
DEFAULT_BASE_URL = "https://raw.githubusercontent.com/AIZOOTech/FaceMaskDetection"
PUBLISHED_SHA256 = {
    "face_mask_detection.caffemodel": "3c2e89cffdc9459a69dd5c2e4c1ca263e6488a56a5a37d81ca2ff32344fbf740",
    "face_mask_detection.prototxt": "8de363802d3557f3d9ff7e72dd61eead60f5e9e145bb962d7979b99ff85d4212",
    "face_mask_detection.json": "bf0a4338fef441629296e316e18dd024ff5c808bab9731d54813b75065841c56",
    "face_mask_detection.params": "7f31b28a46757a322a195691b080b3ca9b96565c1351b4c545b3ca56227258ac",
    "face_mask_detection.pb": "6a2072385eb0ff786af61743e60469f24ac12ba15507d15eccf6e35f17dbb239",
    "face_mask_detection.pth": "38be682d73e2e138aeb6624aa341a9734c11717898c5c54cc4476da0e0ef501a",
    "face_mask_detection.tflite": "d2347acf155858681619bc009368f730288aa0447d2c97209be4a26d9be4e928",
    "model360.json": "cbde16b9fc822c03d1b8f0e6d2bce6a69eb02e9cbe9104a0ed97119858761ae0",
    "model360.pth": "2f131f1d1a2570a0c0da446a82104a78da99e4512bd6c6c00c5004ff633ba4de",
    "paddle/__model__": "6b45bf56e5138734db9d33bb738bbb86599b1ddf087c5674392f67ef252d121a",
    "paddle/__params__": "21e6afaaebc909d16cb02a3a97195879174bc2c2b07b0204d07e40447dba970a",
}
# What `maskjobs models fetch FORMAT` downloads. The Keras .hdf5 is not in the pinned set.
FETCH_SETS = {
    "caffe": ("face_mask_detection.prototxt", "face_mask_detection.caffemodel"),
    "pytorch": ("face_mask_detection.pth", "face_mask_detection.json"),
    "pytorch-360": ("model360.pth", "model360.json"),
    "tensorflow": ("face_mask_detection.pb",),
    "tflite": ("face_mask_detection.tflite",),
    "mxnet": ("face_mask_detection.params",),
    "paddle": ("paddle/__model__", "paddle/__params__"),
}
_CHUNK = 1 << 20
_TIMEOUT_S = 60
# A download left aside this long is a killed fetch's, not one still running in another process.
_STALE_PART_S = 24 * 3600


def cache_dir() -> Path:
    """The user cache: ``$MASKJOBS_CACHE``, else ``$XDG_CACHE_HOME/maskjobs``, else ``~/.cache/maskjobs``."""
    if os.environ.get("MASKJOBS_CACHE"):
        return Path(os.environ["MASKJOBS_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "maskjobs"


def weights_cache() -> Path:
    """Where fetched and imported weight files live: ``cache_dir()/weights``."""
    return cache_dir() / "weights"


def resolve_weights(flag: Path | str | None) -> Path:
    """The weight file to load, or a one-line error saying how to provide one."""
    if flag:
        return Path(flag)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    for name in _CACHED_NAMES:
        candidate = weights_cache() / name
        if candidate.is_file():
            return candidate
    raise InputError(
        f"no weights: pass --weights FILE, set {ENV_VAR}, or run `maskjobs models fetch` (cache: {weights_cache()})"
    )


def find_caffe_reference(flag: Path | str | None, near: Path) -> tuple[Path, Path] | None:
    """The published Caffe pair ``(prototxt, caffemodel)``: from ``flag`` (either file), else beside
    ``near``, else in the cache; None when none is found. A ``flag`` naming a missing pair is an error."""
    if flag:
        base = Path(flag)
        pair = (base.with_suffix(".prototxt"), base.with_suffix(".caffemodel"))
        for p in pair:
            if not p.is_file():
                raise WeightsError(p, "the reference Caffe pair needs both the .prototxt and the .caffemodel")
        return pair
    for folder in (Path(near).parent, weights_cache()):
        pair = (folder / "face_mask_detection.prototxt", folder / "face_mask_detection.caffemodel")
        if all(p.is_file() for p in pair):
            return pair
    return None


def base_url(flag: str | None = None) -> str:
    """``--base-url``, else ``$MASKJOBS_WEIGHTS_URL``, else AIZOO's raw GitHub files."""
    return (flag or os.environ.get(URL_ENV_VAR) or DEFAULT_BASE_URL).rstrip("/")


def file_url(name: str, base: str | None = None) -> str:
    """``<base>/<pinned commit>/models/<name>``."""
    return f"{base_url(base)}/{PINNED_COMMIT}/models/{name}"


def _download(url: str, dest: Path, expected_sha256: str) -> None:
    """Streams ``url`` into a temporary file beside ``dest``; renames it only if the digest matches."""
    h = hashlib.sha256()
    try:
        with (
            atomic_output(dest) as tmp,
            open(tmp, "wb") as out,
            urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response,
        ):
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                h.update(chunk)
                out.write(chunk)
            if h.hexdigest() != expected_sha256:
                raise WeightsError(url, f"checksum mismatch: SHA-256 {h.hexdigest()}, expected {expected_sha256}")
    except urllib.error.HTTPError as exc:
        raise WeightsError(url, f"download failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise WeightsError(url, f"download failed: {getattr(exc, 'reason', None) or exc}") from None


def fetch(formats: Iterable[str], *, base: str | None = None) -> list[Path]:
    """Downloads the published files of ``formats`` (keys of :data:`FETCH_SETS`) into the cache.

    Files already cached with the right digest are kept; every new file is verified
    against :data:`PUBLISHED_SHA256` before it appears in the cache.
    """
    names: list[str] = []
    for fmt in formats:
        if fmt not in FETCH_SETS:
            raise InputError(f"unknown format {fmt!r} to fetch (known: {', '.join(FETCH_SETS)})")
        names += [n for n in FETCH_SETS[fmt] if n not in names]
    sweep(weights_cache(), older_than_s=_STALE_PART_S, recursive=True)
    paths = []
    for name in names:
        dest = weights_cache() / name
        expected = PUBLISHED_SHA256[name]
        if dest.is_file() and sha256_of(dest) == expected:
            logger.info("%s: already cached", dest)
        else:
            logger.info("fetching %s", file_url(name, base))
            _download(file_url(name, base), dest, expected)
        paths.append(dest)
    return paths
