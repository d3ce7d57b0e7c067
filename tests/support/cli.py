"""Running the real ``deliverer`` command as a user would: a subprocess, the test's
database and broker in its environment."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from deliverer.config import Settings

DELIVERER = Path(sys.executable).with_name("deliverer")
CLI_TIMEOUT = 120.0


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a user would have: the test's database and broker, nothing else of
    deliverer's from the calling shell."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DELIVERER_", "PROMETHEUS_"))
           and k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update({
        "DATABASE_URL": settings.database_url,
        "CELERY_BROKER_URL": settings.broker_url,
        "DELIVERER_DATA_DIR": str(settings.data_dir),
        "DELIVERER_ALLOW_PRIVATE_URLS": "1",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def run_cli(settings: Settings, *args: str, check: bool = True, input: str | None = None,
            **env: str) -> subprocess.CompletedProcess[str]:
    """``deliverer ARGS...`` as a subprocess, as a user would run it."""
    result = subprocess.run([str(DELIVERER), *args], env=cli_env(settings, **env),
                            capture_output=True, text=True, timeout=CLI_TIMEOUT, input=input,
                            stdin=None if input is not None else subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"deliverer {' '.join(args)} exited {result.returncode}\n"
                             f"stdout: {result.stdout}\nstderr: {result.stderr}")
    return result


def run_cli_on_a_terminal(settings: Settings, *args: str,
                          answer: str) -> subprocess.CompletedProcess[str]:
    """``deliverer ARGS...`` with a terminal (a pseudo-terminal) as stdin, on which
    ``answer`` is typed."""
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer.encode() + b"\n")
        return subprocess.run([str(DELIVERER), *args], env=cli_env(settings), stdin=terminal,
                              capture_output=True, text=True, timeout=CLI_TIMEOUT)
    finally:
        os.close(terminal)
        os.close(controller)
