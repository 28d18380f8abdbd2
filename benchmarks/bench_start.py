"""The embedded Ray's fixed cost: Ray started as Ray starts it against maskjobs' start, side by side.

    python -m benchmarks.bench_start                 # 6 rounds of each variant, alternating
    python -m benchmarks.bench_start --rounds 10 --cpus 2

Each start runs in a fresh Python process (``--child VARIANT``), as ``maskjobs run`` does, and
times ``ray_session`` from entry until Ray is ready (``start``), one trivial task
(``first task``: a worker process answering), leaving the block (``stop``), and the whole
process from its start to its exit (``process``, imports included). Variants:

- **ray**: Ray's public path (``ray.init`` with the same arguments; no start-up patches), the
  baseline;
- **stop 24**: maskjobs' start-up patches as they were before stop 25 (Ray's log monitor and
  a full dashboard agent, whose dependencies the driver imports before it starts the raylet);
- **maskjobs**: as ``maskjobs run`` starts Ray.

The table gives medians and each variant's ratio to the baseline (baseline / variant: above 1
is faster). The machine may be shared: compare within one run only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from benchmarks.common import machine

VARIANTS = ("ray", "stop 24", "maskjobs")
_FIELDS = ("start", "first task", "stop", "process")


def _child(variant: str, cpus: float) -> None:
    """Starts and stops one embedded Ray the ``variant`` way; prints its timings as JSON."""
    import ray._private.node as ray_node

    from jobs.config import RayConfig
    from jobs.pipeline import ray_private, session

    if variant == "ray":
        ray_private.tested = lambda surface: False  # type: ignore[assignment]  # Ray's public path
    elif variant == "stop 24":
        import ray._private.utils as ray_utils

        session._no_log_monitor = ray_node.Node.start_log_monitor  # type: ignore[assignment]
        session._minimal_agent = ray_utils.get_dashboard_dependency_error  # type: ignore[assignment]
    t0 = time.monotonic()
    with session.ray_session(RayConfig(num_cpus=cpus)) as ray:
        t1 = time.monotonic()
        ray.get(ray.remote(lambda: None).remote())
        t2 = time.monotonic()
    t3 = time.monotonic()
    print(json.dumps({"start": t1 - t0, "first task": t2 - t1, "stop": t3 - t2}))


def _one(variant: str, cpus: float) -> dict[str, float]:
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_start", "--child", variant, "--cpus", str(cpus)],
        check=True, capture_output=True, text=True,
    ).stdout
    times = json.loads(out.strip().splitlines()[-1])
    times["process"] = time.monotonic() - t0
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="starts of each variant (alternating)")
    parser.add_argument("--cpus", type=float, default=2, help="the embedded Ray's CPUs")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.cpus)
        return
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            runs[variant].append(_one(variant, args.cpus))
    print(machine())
    print(f"embedded Ray, {args.cpus:g} CPUs, {args.rounds} rounds, medians in seconds (ratio: ray / variant)")
    print(f"| variant | {' | '.join(_FIELDS)} |")
    print(f"| --- |{' ---: |' * len(_FIELDS)}")
    base = {f: statistics.median(r[f] for r in runs["ray"]) for f in _FIELDS}
    for variant in VARIANTS:
        cells = []
        for field in _FIELDS:
            value = statistics.median(r[field] for r in runs[variant])
            cells.append(f"{value:.2f}" + ("" if variant == "ray" else f" ({base[field] / value:.2f}x)"))
        print(f"| {variant} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
