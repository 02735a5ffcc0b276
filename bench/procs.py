"""Processes the benchmark starts: free ports, start and wait for readiness, stop, RSS and CPU."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Proc:
    """A started process group and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    extra_pids: list[int] = field(default_factory=list)

    def pids(self) -> list[int]:
        """The process and all its descendants (gunicorn workers, forked upstream workers)."""
        return descendants(self.popen.pid) + self.extra_pids

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, read from /proc."""
    found = [pid]
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    i = 0
    while i < len(found):
        found += children.get(found[i], [])
        i += 1
    return found


def start(
    name: str,
    argv: list[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    port: int = 0,
    cwd: Path | None = None,
    inherit: bool = True,
    timeout: float = 30.0,
) -> Proc:
    """Start argv in its own process group; with a port, wait until it accepts connections."""
    log = log_dir / f"{name}.log"
    full_env = {**(os.environ if inherit else {}), **(env or {})}
    with log.open("ab") as out:
        popen = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd or ROOT,
            start_new_session=True,
        )
    proc = Proc(name, popen, log, port)
    if port:
        deadline = time.monotonic() + timeout
        while not port_open(port):
            if popen.poll() is not None:
                raise RuntimeError(f"{name} exited with {popen.returncode}:\n{proc.tail()}")
            if time.monotonic() > deadline:
                stop(proc)
                raise RuntimeError(f"{name} did not listen on {port} in {timeout}s:\n{proc.tail()}")
            time.sleep(0.05)
    return proc


def stop(proc: Proc, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after the grace period."""
    if proc.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGTERM)
        try:
            proc.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait()


@contextlib.contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        stop(proc)


def rss_bytes(pids: list[int]) -> dict[int, int]:
    """Resident set size per pid (from /proc/PID/statm)."""
    out = {}
    for pid in pids:
        try:
            out[pid] = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK
