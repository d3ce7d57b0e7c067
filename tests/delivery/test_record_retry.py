"""Recording a delivery survives a transient database abort (deadlock victim, restart).

Found by the beat fault scenario (tests/faults): recording transactions of one endpoint
deadlocked now and then; the loser's POST went unrecorded, its lease ran out and the
webhook was sent a second time. ``in_transaction`` runs the aborted transaction again.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from deliverer.db import in_transaction


def _abort() -> OperationalError:
    return OperationalError("UPDATE endpoints ...", {}, Exception("deadlock detected"))


def test_an_aborted_transaction_is_run_again(settings):
    calls: list[int] = []

    def work(session):
        calls.append(session.execute(text("SELECT 1")).scalar_one())
        if len(calls) < 3:
            raise _abort()
        return "recorded"

    assert in_transaction(work, retry_for=5.0) == "recorded"
    assert calls == [1, 1, 1]


def test_it_gives_up_after_retry_for(settings):
    calls: list[int] = []

    def work(session):
        calls.append(1)
        raise _abort()

    started = time.monotonic()
    with pytest.raises(OperationalError):
        in_transaction(work, retry_for=0.3)
    assert time.monotonic() - started < 2.0
    assert len(calls) >= 2


def test_other_errors_are_not_retried(settings):
    calls: list[int] = []

    def work(session):
        calls.append(1)
        raise ValueError("a bug, not a transient abort")

    with pytest.raises(ValueError):
        in_transaction(work, retry_for=5.0)
    assert calls == [1]
