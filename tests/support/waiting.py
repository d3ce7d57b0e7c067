"""Waiting for a condition the tests cannot be told about: poll it, within a bound."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import text

T = TypeVar("T")

DEFAULT_WAIT = 15.0


def wait_until(predicate: Callable[[], T], timeout: float = DEFAULT_WAIT, interval: float = 0.02,
               message: str = "condition", on_poll: Callable[[], object] | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``.

    ``on_poll`` runs before each check (the tests use it to run the beat sweep).
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        if on_poll is not None:
            on_poll()
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}; "
                                 f"last value: {last!r}")
        time.sleep(interval)


def waiting_on_a_lock(conn: Any) -> bool:
    """Whether a session of ``conn``'s database waits for a lock (pg_stat_activity is
    read once per transaction: each look is a transaction of its own)."""
    try:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'")).scalar())
    finally:
        conn.rollback()


# The single publish's statement, prepared (``deliverer.prepared``) on first use on a
# connection and executed by name after.
PUBLISH_STATEMENT = ("PREPARE deliverer_", "EXECUTE deliverer_")


def lock_wait_of(conn: Any, *statements: str) -> str | None:
    """What a session of ``conn``'s database running a statement that contains one of
    ``statements`` waits for (pg_stat_activity's wait_event: ``transactionid``,
    ``tuple``, ``advisory``...), or None while none waits for a lock."""
    try:
        return conn.execute(text(
            "SELECT wait_event FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            " AND EXISTS (SELECT FROM unnest(:statements) AS s WHERE strpos(query, s) > 0)"
            " LIMIT 1"), {"statements": list(statements)}).scalar()
    finally:
        conn.rollback()
