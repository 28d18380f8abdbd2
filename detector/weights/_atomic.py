"""Atomic file output: write a temporary file beside the destination, rename it when complete."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(dest: Path) -> Iterator[Path]:
    """Yields a temporary path in ``dest``'s folder; renamed to ``dest`` if the block succeeds.

    On any exception the temporary file is removed, so ``dest`` is either the complete new
    file or untouched, and no partial file is left behind. Permissions follow the umask.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
