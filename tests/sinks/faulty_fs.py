"""A real local filesystem that refuses some writes, as a full disk or a flaky object store does.

Not a mock: files are written to and read from disk by pyarrow; only the outcome of chosen
writes is changed. ``FaultyHandler(root, rule)`` wraps a ``LocalFileSystem`` (pass it to
``pyarrow.fs.PyFileSystem``); ``rule(path, data) -> bool`` is asked when a written file is
closed (``data``: its bytes, Parquet footers included) and True makes the close raise ``ENOSPC``
(no space left on device), leaving what was written as a disk that filled up would.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

Rule = Callable[[str, bytes], bool]


class _Stream:
    """An output stream that buffers, then writes through on close unless the rule says fail."""

    def __init__(self, inner: pafs.FileSystem, path: str, rule: Rule, failures: list[str]) -> None:
        self._inner, self._path, self._rule, self._failures = inner, path, rule, failures
        self._buffer = bytearray()
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._buffer += view
        return len(view)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        data = bytes(self._buffer)
        refused = self._rule(self._path, data)
        with self._inner.open_output_stream(self._path) as f:
            f.write(data[: len(data) // 2] if refused else data)  # a full disk keeps what fitted
        if refused:
            self._failures.append(self._path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)


class FaultyHandler(pafs.FileSystemHandler):
    def __init__(self, rule: Rule) -> None:
        self.fs = pafs.LocalFileSystem()
        self.rule = rule
        self.failures: list[str] = []  # the paths whose writes were refused, in order
        self._lock = threading.Lock()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FaultyHandler) and other.fs == self.fs

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "faulty-local"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refused")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any = None) -> Any:
        with self._lock:
            return pa.PythonFile(_Stream(self.fs, path, self.rule, self.failures), mode="w")

    def open_append_stream(self, path: str, metadata: Any = None) -> Any:
        raise OSError("append is not supported")


def faulty_fs(rule: Rule) -> tuple[pafs.PyFileSystem, FaultyHandler]:
    handler = FaultyHandler(rule)
    return pafs.PyFileSystem(handler), handler


def fail_first(n: int, needle: str = "part-") -> Rule:
    """Refuses the first ``n`` writes of each file whose name contains ``needle``."""
    seen: dict[str, int] = {}

    def rule(path: str, data: bytes) -> bool:
        name = os.path.basename(path)
        if needle not in name:
            return False
        target = name.split(".")[1] if name.startswith(".") else name  # the file written aside: .NAME.<hex>.part
        seen[target] = seen.get(target, 0) + 1
        return seen[target] <= n

    return rule
