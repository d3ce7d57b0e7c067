"""A real ``celery -A deliverer.worker`` subprocess, as the Procfile runs it, and the
``celery`` command line operators point at it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import deliverer
from deliverer.broker import queues

REPO = Path(deliverer.__file__).resolve().parent.parent


def start_worker(env: dict[str, str], log: Path, node: str, *extra: str,
                 concurrency: int = 2) -> subprocess.Popen[bytes]:
    """A threads-pool worker on every deliverer queue, named ``node``, logging to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "deliverer.worker", "worker", "--pool",
             "threads", "--concurrency", str(concurrency), "-Q", ",".join(queues.ALL),
             "--without-gossip", "--without-mingle", "--loglevel", "INFO", "-n", node,
             *extra],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            stdin=subprocess.DEVNULL)


def stop_worker(worker: subprocess.Popen[bytes], timeout: float = 30.0) -> float:
    """SIGTERM, as a platform scaling down sends it; how long the worker took to exit."""
    began = time.monotonic()
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    return wait_exit(worker, timeout, began)


def wait_exit(worker: subprocess.Popen[bytes], timeout: float,
              began: float | None = None) -> float:
    began = time.monotonic() if began is None else began
    try:
        worker.wait(timeout)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(10)
    return time.monotonic() - began


def celery_cli(env: dict[str, str], *args: str,
               timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``celery -A deliverer.worker ARGS...``, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "celery", "-A", "deliverer.worker", *args],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
