"""The Ray processes this test process started, to check that an embedded Ray stops clean."""

from __future__ import annotations

import os
import time

from jobs.pipeline.watchdog import descendants


def _cmdline(pid: int) -> str | None:
    """``pid``'s whole command line, spaces collapsed (Ray's renamed processes pad their
    titles); None once it has exited."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return " ".join(f.read().replace(b"\0", b" ").decode(errors="replace").split())
    except OSError:
        return None


def ray_processes() -> list[str]:
    """Command lines of this test process's Ray descendants (other fixtures may run servers of their own)."""
    lines = (_cmdline(pid) for pid in descendants(os.getpid()))
    return [line for line in lines if line and ("ray" in line or "jobs.pipeline.watchdog" in line)]


def none_left(timeout: float = 20) -> bool:
    """Waits up to ``timeout`` s for every Ray descendant to exit; True when none is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and ray_processes():
        time.sleep(0.2)
    return not ray_processes()


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _address(hex_addr: str) -> str:
    """``/proc/net/tcp{,6}``'s local address (host-order hex words) -> an IP address."""
    import ipaddress

    raw = bytes.fromhex(hex_addr)
    host = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is little-endian
    return str(ipaddress.ip_address(host))


def listening_sockets() -> list[tuple[str, str, int]]:
    """``(command, address, port)`` of every TCP socket in LISTEN state that one of this test
    process's Ray descendants holds (read from ``/proc``: no ``ss`` or psutil needed)."""
    owners: dict[str, str] = {}
    for pid in descendants(os.getpid()):
        command = _cmdline(pid)  # whole: a cut at a fixed length failed on a longer checkout path ("gcs_ser")
        if command and "ray" in command:
            owners.update(dict.fromkeys(_socket_inodes(pid), command))
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] != "0A" or cols[9] not in owners:  # 0A: LISTEN
                continue
            host, port = cols[1].split(":")
            out.append((owners[cols[9]], _address(host), int(port, 16)))
    return out
