"""The processes the benchmark starts, and what it reads of them from /proc: each child
leads a process group of its own and is stopped by id; the Procfile's lines are run as
the platform runs them; CPU time and resident memory are read per process tree (and for
the PostgreSQL server as a whole)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


class BenchError(RuntimeError):
    """A benchmark could not run, or its correctness checks failed."""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def procfile(path: Path = REPO / "Procfile") -> dict[str, str]:
    """The Procfile's process types and their command lines."""
    commands: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not line.startswith("#"):
            commands[name.strip()] = command.strip()
    return commands


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@dataclass
class Processes:
    """Every child process the suite starts; each leads its own process group."""

    log_dir: Path
    running: list[Proc] = field(default_factory=list)
    _counter: int = 0

    def start(self, name: str, argv: list[str], env: Mapping[str, str],
              cwd: Path = REPO) -> Proc:
        self._counter += 1
        log = self.log_dir / f"{self._counter:02d}-{name}.log"
        handle = log.open("wb")
        try:
            popen = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdout=handle,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        finally:
            handle.close()
        proc = Proc(name, popen, log)
        self.running.append(proc)
        return proc

    def start_procfile(self, kind: str, env: Mapping[str, str], name: str | None = None,
                       swap: tuple[str, str] | None = None) -> Proc:
        """A Procfile line run as the platform runs it: ``bash -c`` with the environment.

        The web line binds 0.0.0.0; the suite binds 127.0.0.1 instead (loopback only).
        ``swap`` = (old, new) replaces a part of the line that must be there (a reference
        server in place of the application).
        """
        command = procfile()[kind].replace("0.0.0.0", "127.0.0.1")
        if swap is not None:
            if swap[0] not in command:
                raise BenchError(f"the Procfile's {kind} line has no {swap[0]}: {command}")
            command = command.replace(*swap)
        return self.start(name or kind, ["bash", "-c", "exec " + command], env)

    def stop(self, proc: Proc, timeout: float = 20.0) -> None:
        """SIGTERM to the process group (a warm shutdown for Celery), SIGKILL after ``timeout``."""
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=timeout)
        # Whatever is left in the group (prefork children, a hung process).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=5)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.running)):
            self.stop(proc, timeout=10.0)


def _stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 onwards, so
    index 1 is the parent's pid, 11-12 the process's CPU ticks, 13-14 its reaped
    children's), or None for a process gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(entry.name)) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    result, stack = [], [pid]
    while stack:
        current = stack.pop()
        result.append(current)
        stack.extend(children.get(current, []))
    return result


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time so far of ``pids`` (those still running), from /proc."""
    ticks = sum(int(fields[11]) + int(fields[12])
                for fields in map(_stat, pids) if fields is not None)
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU time so far of the PostgreSQL server on this machine (the benchmark's database
    among others: the benchmarks run alone): its live processes', plus what the
    postmaster's exited children used (its ``cutime`` + ``cstime``), so that a backend
    whose connection closed meanwhile (a publisher's, a pool's overflow) still counts.
    The difference of two readings is the server's CPU between them."""
    server: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "postgres" \
                    and (fields := _stat(entry.name)) is not None:
                server[int(entry.name)] = fields
    reaped = sum(int(fields[13]) + int(fields[14]) for fields in server.values()
                 if int(fields[1]) not in server)  # the postmaster: no server parent
    return cpu_seconds(list(server)) + reaped / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants (prefork children included)."""
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total
