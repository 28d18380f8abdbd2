"""Peak memory and throughput of ``maskjobs run``: a long video, the same video 10x longer,
and many short clips.

    python -m benchmarks.bench_memory                    # 1 and 10 minutes of 1080p, 100 clips of 720p
    python -m benchmarks.bench_memory --minutes 1 --repeat 3 --clips 20
    python -m benchmarks.bench_memory --help

Each case runs the command as a user does (``maskjobs run INPUT --out DIR``, embedded local
Ray, every default) while this script samples, every ``--interval`` seconds, every process
of the job: the command itself and all its descendants (Ray's GCS, raylet and agents, the
decode workers and detector actors). It reports the peak of the sum of their PSS
(proportional set size: a page shared by N processes, such as Ray's object store in
/dev/shm, counts 1/N in each, so the sum is what the job really holds) and of the sum of
their RSS (which counts shared pages once per process, so overstates), the largest single
process, and frames per second over the whole command.

The long video is one minute of generated 1080p H.264 (x264 veryfast, 30 fps) and the same
minute played ``--repeat`` times in a row, joined without re-encoding: the same content,
``--repeat`` times as many frames. Memory that does not grow with the video's length
gives a ratio near 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import default_weights, machine
from benchmarks.videos import ensure_clips, ensure_repeated, ensure_video

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def process_tree(root: int) -> list[int]:
    kids = _children()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _pss_rss(pid: int) -> tuple[int, int] | None:
    """(PSS, RSS) in bytes, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            pss = rss = 0
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
            return pss, rss
    except (OSError, ValueError):
        return None


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace").rsplit("/", 1)[-1][:40]
    except OSError:
        return "?"


@dataclass
class MemoryPeak:
    pss: int = 0
    rss: int = 0
    processes: int = 0
    largest: tuple[int, str] = (0, "")
    by_name: dict[str, int] = field(default_factory=dict)  # peak PSS summed over processes of a name
    samples: int = 0
    timeline: list[tuple[float, int]] = field(default_factory=list)


class TreeSampler(threading.Thread):
    """Samples a process tree's memory until stopped."""

    def __init__(self, root: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak = MemoryPeak()
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._halt.is_set():
            total_pss = total_rss = n = 0
            names: dict[str, int] = {}
            for pid in process_tree(self.root):
                got = _pss_rss(pid)
                if got is None:
                    continue
                pss, rss = got
                total_pss, total_rss, n = total_pss + pss, total_rss + rss, n + 1
                name = _name(pid)
                names[name] = names.get(name, 0) + pss
                if pss > self.peak.largest[0]:
                    self.peak.largest = (pss, name)
            for name, pss in names.items():
                self.peak.by_name[name] = max(self.peak.by_name.get(name, 0), pss)
            p = self.peak
            p.pss, p.rss, p.processes = max(p.pss, total_pss), max(p.rss, total_rss), max(p.processes, n)
            p.samples += 1
            p.timeline.append((time.monotonic() - self._t0, total_pss))
            self._halt.wait(self.interval)

    def stop(self) -> MemoryPeak:
        self._halt.set()
        self.join()
        return self.peak


@dataclass
class Case:
    name: str
    seconds: float
    frames: int
    peak: MemoryPeak


def run_case(name: str, inputs: list[Path], out: Path, weights: Path, interval: float, flags: list[str] = ()) -> Case:
    exe = shutil.which("maskjobs", path=str(Path(sys.executable).parent)) or "maskjobs"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "MASKJOBS_WEIGHTS": str(weights)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([exe, "run", *map(str, inputs), "--out", str(out), *flags], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid, interval)
    sampler.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - t0
    peak = sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: maskjobs run exited {proc.returncode}: {err[-2000:]}")
    import pyarrow.parquet as pq

    frames = pq.read_table(out / "videos.parquet", columns=["frames_processed"]).column(0).to_pylist()
    case = Case(name, seconds, int(sum(frames)), peak)
    gib = 1024**3
    print(
        f"{name}: {case.frames} frames in {seconds:.1f} s ({case.frames / seconds:.1f} fps); peak PSS "
        f"{peak.pss / gib:.2f} GiB (RSS sum {peak.rss / gib:.2f} GiB) over {peak.processes} processes; "
        f"largest {peak.largest[1]} {peak.largest[0] / gib:.2f} GiB; {peak.samples} samples",
        flush=True,
    )
    top = sorted(peak.by_name.items(), key=lambda kv: -kv[1])[:6]
    print("  peak PSS by process: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in top), flush=True)
    return case


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=int, default=1, help="length of the generated 1080p video")
    p.add_argument("--repeat", type=int, default=10, help="the long case is the video this many times over")
    p.add_argument("--clips", type=int, default=100, help="short clips (0: skip)")
    p.add_argument("--clip-frames", type=int, default=60, help="frames per clip (30 fps, 720p)")
    p.add_argument("--interval", type=float, default=0.25, help="seconds between memory samples")
    p.add_argument("--limit-gib", type=float, default=4.0, help="the bound the peak must stay under")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "maskjobs-bench")
    p.add_argument("--flags", default="", help="extra flags for every run (e.g. '--stride 15': more decoders at once)")
    args = p.parse_args(argv)
    flags = args.flags.split()
    weights = (args.weights or default_weights()).resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(machine())
    short = ensure_video(args.workdir, "1080p", int(args.minutes * 60 * 30))
    long = ensure_repeated(short, args.repeat)
    clips = ensure_clips(args.workdir, args.clips, "720p", args.clip_frames) if args.clips else None

    cases = [
        run_case(f"1080p, {args.minutes} min", [short], args.workdir / "out-mem-short", weights, args.interval, flags),
        run_case(f"1080p, {args.minutes * args.repeat} min", [long], args.workdir / "out-mem-long", weights,
                 args.interval, flags),
    ]
    if clips is not None:
        cases.append(run_case(f"{args.clips} clips of {args.clip_frames} frames, 720p", [clips],
                              args.workdir / "out-mem-clips", weights, args.interval, flags))
    gib = 1024**3
    print("\n| case | frames | wall | frames/s | peak PSS (all processes) | peak RSS sum | processes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in cases:
        print(f"| {c.name} | {c.frames} | {c.seconds:.1f} s | {c.frames / c.seconds:.1f} | {c.peak.pss / gib:.2f} GiB "
              f"| {c.peak.rss / gib:.2f} GiB | {c.peak.processes} |")
    growth = cases[1].peak.pss / cases[0].peak.pss
    worst = max(c.peak.pss for c in cases) / gib
    print(f"\npeak PSS, {args.repeat}x longer video / shorter: {growth:.2f}x; "
          f"highest peak {worst:.2f} GiB ({'under' if worst < args.limit_gib else 'OVER'} {args.limit_gib:g} GiB)")
    (args.workdir / "memory.json").write_text(json.dumps(
        [{"case": c.name, "frames": c.frames, "seconds": c.seconds, "peak_pss": c.peak.pss, "peak_rss": c.peak.rss,
          "timeline": c.peak.timeline} for c in cases]))


if __name__ == "__main__":
    main()
