"""Fixtures of the fault-injection suite.

These scenarios bring their own private PostgreSQL and Redis (see ``harness``), so they
never touch the shared servers the rest of the suite uses, and they run once per test
run: in the production-backend pass (``DELIVERER_TEST_BACKEND=production``), whose stack
they exercise. The embedded pass skips them rather than run the same thing twice. The
RabbitMQ pass (``rabbitmq``) runs those about the broker (scripts/test chooses them) on
a private RabbitMQ node instead of Redis (``rabbitmq_node``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import harness
from tests.support.backend import BACKEND


@pytest.fixture(autouse=True)
def _clean_state() -> None:
    """Replaces the suite-wide autouse fixture: nothing shared to clean here."""
    if BACKEND == "embedded":
        pytest.skip("fault injection runs in the server backends' passes "
                    "(it brings its own PostgreSQL and broker)")
    broker = "rabbitmq-server" if BACKEND == "rabbitmq" else "redis-server"
    tools = [broker] + (["runuser"] if os.geteuid() == 0 else [])
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"fault injection needs {', '.join(missing)} on PATH")


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[harness.Stack]:
    """Private PostgreSQL + Redis, migrated; processes are started by each scenario.
    Parametrized indirectly with True, Redis speaks TLS only (``rediss://``)."""
    tls = bool(getattr(request, "param", False))
    with harness.running_stack(tmp_path / "stack", broker_tls=tls) as running:
        yield running


@pytest.fixture
def faults() -> harness.FaultLog:
    return harness.FaultLog()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not harness.REPORT.lines:
        return
    terminalreporter.section("fault injection")
    for line in harness.REPORT.lines:
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"figures: {harness.REPORT.path}")
