"""A real Ray head for tests: ``ray start --head --block`` on 127.0.0.1, token auth, own ports.

``ray stop`` is machine-wide (it would stop every Ray on this machine, other people's
too), so a head started here is stopped through its own ``--block`` process: SIGTERM
makes it shut down what it started; whatever is left in its process group, or names
its temp dir, is then SIGKILLed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

_PORT_NAMES = (
    "port",
    "dashboard-port",
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
    "node-manager-port",
    "object-manager-port",
)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _worker_port_range() -> tuple[int, int]:
    """200 ports below the kernel's ephemeral range, away from Ray's default 10002-19999."""
    import random

    base = random.randrange(20000, 32000, 200)
    return base, base + 199



def _end_block_process(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM a ``ray start --block`` process (it then stops what it started), SIGKILL it after
    ``grace_s``, then SIGKILL whatever is left in its process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

def _processes() -> list[tuple[int, int, str]]:
    """``(pid, ppid, args)`` of every process."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3:
            rows.append((int(parts[0]), int(parts[1]), parts[2]))
    return rows


def pids_mentioning(text: str) -> set[int]:
    return {pid for pid, _, args in _processes() if text in args}


class RayHead:
    """One Ray head node on 127.0.0.1 with token auth, its own temp dir and ports."""

    def __init__(
        self, *, num_cpus: int = 2, object_store_mb: int = 300, python: str | Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``python``: the interpreter the head and its workers run (default: this venv's), e.g.
        one from :func:`deps_only_python`; ``env``: extra environment variables for the head."""
        self.python = Path(python) if python is not None else Path(sys.executable)
        self.extra_env = dict(env or {})
        self.temp_dir = Path(tempfile.mkdtemp(prefix="mjray-", dir="/tmp"))
        self.token = secrets.token_hex(32)
        self.token_file = self.temp_dir / "auth_token"
        self.token_file.write_text(self.token)
        self.ports = dict(zip(_PORT_NAMES, _free_ports(len(_PORT_NAMES)), strict=True))
        self.gcs_address = f"127.0.0.1:{self.ports['port']}"
        self.dashboard_url = f"http://127.0.0.1:{self.ports['dashboard-port']}"
        self.num_cpus = num_cpus
        self.object_store_mb = object_store_mb
        self.proc: subprocess.Popen | None = None
        self.log = self.temp_dir / "ray-start.log"
        self.nodes: list[RayWorkerNode] = []

    def env(self) -> dict[str, str]:
        """The head's environment: token auth on, its ``python`` first on PATH."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_file),
            RAY_USAGE_STATS_ENABLED="0",
            # Single-node mode: Ray keeps 127.0.0.1 instead of resolving this machine's IP.
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
            AWS_EC2_METADATA_DISABLED="true",  # an s3:// output never asks a metadata service
            PATH=os.pathsep.join([str(self.python.parent), *self._path_without_maskjobs(env.get("PATH", ""))]),
        )
        env.update(self.extra_env)
        return env

    def _path_without_maskjobs(self, path: str) -> list[str]:
        """``$PATH``'s folders; for a head with its own ``python``, those with a ``maskjobs``
        command left out (another venv's), so the head sees only its own environment."""
        folders = [p for p in path.split(os.pathsep) if p]
        if self.python == Path(sys.executable):
            return folders
        return [p for p in folders if not (Path(p) / "maskjobs").exists()]

    def start(self, timeout_s: float = 90) -> RayHead:
        lo, hi = _worker_port_range()
        cmd = [
            str(self.python), "-m", "ray.scripts.scripts", "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
            "--temp-dir", str(self.temp_dir), "--num-cpus", str(self.num_cpus), "--num-gpus", "0",
            "--object-store-memory", str(self.object_store_mb * 1024 * 1024),
            "--min-worker-port", str(lo), "--max-worker-port", str(hi), "--disable-usage-stats",
        ]
        for name, port in self.ports.items():
            cmd += [f"--{name}", str(port)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, env=self.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.temp_dir,  # outside the repository: nothing of it imports by accident
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"ray start --head exited: {self.log.read_text()[-2000:]}")
            if self._jobs_api_up():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray head did not come up in {timeout_s:g} s: {self.log.read_text()[-2000:]}")

    def _jobs_api_up(self) -> bool:
        req = urllib.request.Request(
            f"{self.dashboard_url}/api/jobs/", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def pids(self) -> set[int]:
        """Processes of this head: those that name its temp dir."""
        return pids_mentioning(str(self.temp_dir))

    def worker_pids(self, title: str) -> list[int]:
        """Worker processes of this head whose title starts with ``ray::<title>`` (an actor class,
        or the task a worker is running), found as children of this head's raylet."""
        procs = _processes()
        raylets = {pid for pid, _, args in procs if "raylet/raylet" in args and str(self.temp_dir) in args}
        return [pid for pid, ppid, args in procs if ppid in raylets and args.startswith(f"ray::{title}")]

    def add_node(
        self, *, num_cpus: int = 2, resources: dict[str, float] | None = None, env: dict[str, str] | None = None
    ) -> RayWorkerNode:
        """Starts another node of this cluster on 127.0.0.1 (its own raylet, object store, ports;
        ``env`` added to the head's environment). The head must have been started with
        ``env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}`` (else Ray keeps it single-node)."""
        node = RayWorkerNode(self, num_cpus=num_cpus, resources=resources or {}, env=env or {})
        self.nodes.append(node)
        return node.start()

    def stop(self, grace_s: float = 20) -> None:
        """Stops this head, its other nodes and every process they started; leaves other Rays alone."""
        for node in self.nodes:
            node.stop(grace_s)
        if self.proc is not None:
            _end_block_process(self.proc, grace_s)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self.pids():
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def deps_only_python(folder: Path) -> Path:
    """A Python that has maskjobs' dependencies and not maskjobs, as on a cluster built from
    ``configs/cluster.yaml``: a venv in ``folder`` whose ``.pth`` file names this venv's
    site-packages. Paths listed in a ``.pth`` are added to ``sys.path`` but their own ``.pth``
    files (maskjobs' editable-install finder among them) are not processed, so ``import jobs``
    fails there while torch, Ray and decord import. Seconds, no downloads."""
    import sysconfig
    import venv

    venv.EnvBuilder(with_pip=False, symlinks=True).create(folder)
    python = folder / "bin" / "python"
    target = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    Path(target, "maskjobs-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


_NODE_PORT_NAMES = (
    "node-manager-port", "object-manager-port", "metrics-export-port", "runtime-env-agent-port",
    "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
)


class RayWorkerNode:
    """A second node joined to a :class:`RayHead` (``ray start --address``), on 127.0.0.1 with its
    own ports, resources and process group, so its raylet can be killed alone."""

    def __init__(self, head: RayHead, *, num_cpus: int, resources: dict[str, float], env: dict[str, str]) -> None:
        self.head = head
        self.extra_env = env
        self.num_cpus = num_cpus
        self.resources = resources
        self.ports = dict(zip(_NODE_PORT_NAMES, _free_ports(len(_NODE_PORT_NAMES)), strict=True))
        self.log = head.temp_dir / f"ray-node-{self.ports['node-manager-port']}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90) -> RayWorkerNode:
        """Starts the node; once more if Ray's own 30 s wait for its registration ran out (a GCS
        busy with a job on 2 loaded cores, seen once in CI), after killing what the first start left."""
        try:
            return self._start(timeout_s)
        except RuntimeError as exc:
            if "timed out during startup" not in str(exc) or self.proc is None:
                raise
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()
            return self._start(timeout_s)

    def _start(self, timeout_s: float) -> RayWorkerNode:
        import json

        lo, hi = _worker_port_range()
        cmd = [
            str(self.head.python), "-m", "ray.scripts.scripts", "start", "--block", "--address", self.head.gcs_address,
            "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.num_cpus), "--num-gpus", "0",
            "--resources", json.dumps(self.resources), "--object-store-memory", str(self.head.object_store_mb << 20),
            "--min-worker-port", str(lo), "--max-worker-port", str(hi), "--disable-usage-stats",
        ]
        for name, port in self.ports.items():
            cmd += [f"--{name}", str(port)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, env={**self.head.env(), **self.extra_env}, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, cwd=self.head.temp_dir,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start --address exited: {self.log.read_text()[-2000:]}")
            if self.raylet_pid() is not None and "Ray runtime started" in self.log.read_text():
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the Ray node did not come up in {timeout_s:g} s: {self.log.read_text()[-2000:]}")

    def pids(self) -> set[int]:
        """Processes of this node: its process group (its raylet, store, agents, workers)."""
        if self.proc is None:
            return set()
        out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True, check=True).stdout
        return {int(pid) for pid, pgid in (line.split() for line in out.splitlines()) if int(pgid) == self.proc.pid}

    def raylet_pid(self) -> int | None:
        mine = self.pids()
        for pid, _, args in _processes():
            if pid in mine and "raylet/raylet" in args:
                return pid
        return None

    def stop(self, grace_s: float = 20) -> None:
        if self.proc is None:
            return
        _end_block_process(self.proc, grace_s)
