"""``deliverer run`` (what ``scripts/start`` runs) as a user runs it: the real script in a
subprocess, on the embedded default in a temporary directory and a free loopback port.

Run once (``unit``): it brings its own database and broker, whatever the backend.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.faults.harness import free_port, group_pids, wait_for
from tests.operations.helpers import DELIVERER

pytestmark = pytest.mark.unit

START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def devserver_env(data_dir: Path) -> dict[str, str]:
    """A user's environment: the embedded default under ``data_dir``, nothing else of
    deliverer's from the calling shell."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DELIVERER_", "PROMETHEUS_"))
           and k not in ("DATABASE_URL", "CELERY_BROKER_URL", "PORT")}
    env.update({"DELIVERER_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"})
    return env


class Running:
    def __init__(self, proc: subprocess.Popen[str]):
        self.proc = proc
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"deliverer run exited {self.proc.returncode} before "
                                     f"{text!r}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout} s:\n{self.output}")
            time.sleep(0.1)


@contextmanager
def deliverer_run(data_dir: Path, *args: str) -> Iterator[Running]:
    """``deliverer run ARGS...`` in a session of its own (its process group: whatever
    is left of it at the end is killed, and only that)."""
    proc = subprocess.Popen([str(DELIVERER), "run", *args], env=devserver_env(data_dir),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        yield Running(proc)
    finally:
        if group_pids(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_a_stop_signal_stops_web_worker_and_beat(tmp_path: Path, signum: int):
    """A supervisor's SIGTERM (or the terminal's SIGHUP) reaches ``deliverer run`` alone:
    it must stop its children as Ctrl-C does, and free the port."""
    port = free_port()
    with deliverer_run(tmp_path, "--port", str(port)) as running:
        running.wait_for("deliverer is up")
        children = [pid for pid in group_pids(running.proc.pid) if pid != running.proc.pid]
        assert len(children) >= 4, running.output  # gunicorn and its workers, worker, beat
        assert not port_is_free(port)

        running.proc.send_signal(signum)
        assert running.proc.wait(STOP_TIMEOUT) == 0, running.output
        wait_for(lambda: not group_pids(running.proc.pid), STOP_TIMEOUT,
                 "the children of deliverer run to exit")
        assert port_is_free(port)
