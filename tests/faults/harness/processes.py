"""A deliverer process (gunicorn, worker, beat) in its own process group: paused, resumed,
killed with ``kill -9`` or stopped, with everything it forked."""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from tests.faults.harness.logs import log_tail
from tests.support.processes import child_pids


@dataclass
class ManagedProcess:
    """A deliverer process (gunicorn, worker, beat) in its own process group."""

    name: str
    role: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def children(self) -> list[int]:
        return child_pids(self.proc.pid) if self.alive() else []

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def _signal_group(self, sig: int) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def pause(self) -> None:
        """SIGSTOP the whole group: it holds what it has and takes nothing new."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def kill9(self) -> None:
        """``kill -9`` of the process and everything it forked (a container dying)."""
        self._signal_group(signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def stop(self, timeout: float = 3.0) -> None:
        if self.alive():
            self._signal_group(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        # Whatever is left of the group (prefork children, a stuck process) goes now.
        self._signal_group(signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
