"""Loads weight files in a child process under a hard memory limit; prints what each load gave.

Run as ``python -m tests.detector.weight_probe JOB.json`` from the project root. JOB::

    {"limit_mb": 2048, "block_torch": true,
     "loads": [{"name": "...", "path": "..."}],
     "fuzz": [{"format": "caffe", "dir": "...", "main": "x.caffemodel", "targets": ["x.caffemodel"],
               "seed": 17, "count": 100}]}

Each load is ``detector.weights.convert_weights`` (what ``maskjobs run`` does before Ray). The
address space is capped with ``RLIMIT_AS`` first, so a file that makes a reader allocate
gigabytes ends in a ``MemoryError`` here instead of swapping the machine. stdout: one JSON
object per load (``name``, ``outcome`` = ``ok`` | ``error`` | ``crash``, ``message``), each with the
peak RSS so far (``maxrss_mb``, from ``VmHWM``), then ``{"maxrss_mb": ...}``. ``error`` is a :class:`MaskjobsError`; ``crash`` anything else. A
segfault ends the process: the parent sees a negative return code and the last name printed.

Fuzz mutations (``random.Random(f"{seed}:{format}:{i}")``, so each file is reproducible
alone), one kind per ``i % 4``: bit flips, a truncation, an integer overwrite at a random
place (1/2/4/8 bytes of a boundary value: length fields), and a shape enlarged (an int32 or
int64 encoding of one of the model's dimensions replaced by a large value; for safetensors
the JSON header's shape).
"""

from __future__ import annotations

import json
import random
import resource
import shutil
import sys
import tempfile
from pathlib import Path

_BOUNDARY = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 60000, (1 << 40), (1 << 63) - 1,
             (1 << 64) - 1)
_DIMS = (3, 8, 16, 32, 64, 128)
_BIG = (60000, 1 << 20, 0x7FFFFFFF)


def _bitflip(data: bytearray, rng: random.Random) -> str:
    flips = rng.randint(1, 8)
    for _ in range(flips):
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
    return f"bitflip x{flips}"


def _truncate(data: bytearray, rng: random.Random) -> str:
    keep = rng.randrange(len(data))
    del data[keep:]
    return f"truncate {keep}"


def _overwrite(data: bytearray, rng: random.Random) -> str:
    width = rng.choice((1, 2, 4, 8))
    value = rng.choice(_BOUNDARY) & ((1 << (8 * width)) - 1)
    # half of them in the first 64 KB, where most headers and length fields are
    at = rng.randrange(min(len(data), 1 << 16) if rng.random() < 0.5 else len(data))
    data[at: at + width] = value.to_bytes(width, "little")
    return f"overwrite {width}B={value:#x} at {at}"


def _enlarge_native(data: bytearray, rng: random.Random) -> str | None:
    size = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(bytes(data[8: 8 + size]))
    except ValueError:
        return None
    keys = sorted(k for k in header if k != "__metadata__")
    key = rng.choice(keys)
    header[key]["shape"] = [rng.choice(_BIG)] + list(header[key]["shape"])[1:]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    data[:] = len(text).to_bytes(8, "little") + text + data[8 + size:]
    return f"enlarge {key} (header)"


def _enlarge(data: bytearray, rng: random.Random, fmt: str) -> str:
    if fmt == "native":
        done = _enlarge_native(data, rng)
        if done:
            return done
    width = rng.choice((4, 8))
    dim = rng.choice(_DIMS)
    pattern = dim.to_bytes(width, "little")
    found, start = [], 0
    while len(found) < 2000 and (at := data.find(pattern, start)) >= 0:
        found.append(at)
        start = at + 1
    if not found:
        return _overwrite(data, rng)
    at = rng.choice(found)
    big = rng.choice(_BIG)
    data[at: at + width] = big.to_bytes(width, "little")
    return f"enlarge {dim}->{big} ({width}B at {at})"


def mutate(data: bytes, fmt: str, seed: int, i: int) -> tuple[bytes, str]:
    """The ``i``-th mutation of ``data`` for format ``fmt`` (deterministic)."""
    rng = random.Random(f"{seed}:{fmt}:{i}")
    out = bytearray(data)
    kind = i % 4
    if kind == 0:
        what = _bitflip(out, rng)
    elif kind == 1:
        what = _truncate(out, rng)
    elif kind == 2:
        what = _overwrite(out, rng)
    else:
        what = _enlarge(out, rng, fmt)
    return bytes(out), what


def _load(name: str, path: Path) -> dict[str, str]:
    from detector.errors import MaskjobsError
    from detector.weights import convert_weights

    try:
        converted = convert_weights(path)
    except MaskjobsError as exc:
        return {"name": name, "outcome": "error", "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - the point: report whatever escaped
        return {"name": name, "outcome": "crash", "message": f"{type(exc).__name__}: {exc}"[:500]}
    return {"name": name, "outcome": "ok", "message": f"input {converted.spec.input_size}, {len(converted.state)} tensors"}


def peak_rss_mb() -> float:
    """This process's peak resident memory: ``VmHWM`` (``ru_maxrss`` would include the RSS of the
    parent it was forked from, which Linux carries across ``exec``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _emit(record: dict[str, object]) -> None:
    record.setdefault("maxrss_mb", peak_rss_mb())
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    limit = int(job.get("limit_mb", 2048)) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if job.get("block_torch", True):
        sys.modules["torch"] = None  # type: ignore[assignment]  # an import of torch fails loudly
    for load in job.get("loads", []):
        _emit(_load(load["name"], Path(load["path"])))
    for fuzz in job.get("fuzz", []):
        fmt, source = fuzz["format"], Path(fuzz["dir"])
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{fmt}-") as tmp:
            work = Path(tmp)
            for item in source.rglob("*"):
                if item.is_file():
                    (work / item.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(item, work / item.relative_to(source))
            originals = {t: (source / t).read_bytes() for t in fuzz["targets"]}
            for i in range(int(fuzz["count"])):
                target = fuzz["targets"][i % len(fuzz["targets"])]
                data, what = mutate(originals[target], fmt, int(fuzz["seed"]), i)
                (work / target).write_bytes(data)
                record = _load(f"{fmt}#{i} {target}: {what}", work / fuzz["main"])
                record["dir"] = str(work)
                _emit(record)
                (work / target).write_bytes(originals[target])
    _emit({})


if __name__ == "__main__":
    main(sys.argv[1])
